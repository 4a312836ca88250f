"""Enforcement at intake: the policy, the rate limit and the quotas of the caller.

Checks run cheapest first and all before anything is stored: registered and
enabled, syscall allowed, model allowed, priority (clamped to the policy's
maximum: a scheduling hint is not worth refusing a call over), then the
counters (rate window, then requests and tokens of the quota period). A
refusal is a :class:`Refused` that intake answers and audits as ``denied``
but does not dead-letter: the message was well-formed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from aiosd.daemon.access.allowance import Allowances, Counter
from aiosd.daemon.access.counters import (
    PERIOD_FIELDS,
    Counters,
    Window,
    period_amounts,
    period_window,
    rate_window,
)
from aiosd.daemon.access.directory import REVISION_GRACE, Directory, Standing
from aiosd.daemon.access.policy import Policy, resource_of
from aiosd.daemon.access.spending import Spent, tally
from aiosd.daemon.errors import DaemonError
from aiosd.daemon.store import Doc
from aiosd.sdk.protocol import ErrorCode, Request, Usage, utcnow
from aiosd.sdk.syscalls import served_by


class PolicyLookup:
    """Agents' standings, cached until the directory's revision moves.

    :meth:`refresh` is called before each batch of syscalls is admitted, so an
    operator's change applies to the next syscall. It reads the revision (one
    read by ``_id``) unless a read that started less than
    :data:`~aiosd.daemon.access.directory.REVISION_GRACE` ago serves (a read
    still under way is waited for): writers wait that long after each change.
    """

    def __init__(
        self,
        directory: Directory,
        trusted: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dir = directory
        self._trusted = trusted
        self._clock = clock
        self._unrestricted = Standing(Policy.unrestricted())
        self._cache: dict[str, Standing | None] = {}
        self._revision: int | None = None
        self._lock = threading.Lock()
        #: The latest read of the revision: when it started and its outcome (pending while it runs).
        self._read: tuple[float, Future[int]] | None = None

    def refresh(self) -> None:
        """Drop every cached standing if the directory changed since the last refresh."""
        now = self._clock()
        with self._lock:
            latest = self._read
            shared = latest is not None and now - latest[0] < REVISION_GRACE
            if latest is not None and shared:
                read = latest[1]
            else:
                read = Future()
                self._read = (now, read)
        if not shared:
            try:
                read.set_result(self._dir.revision())
            except BaseException as exc:
                read.set_exception(exc)
                with self._lock:
                    if self._read is not None and self._read[1] is read:
                        self._read = None  # a failed read serves nobody after this batch
        revision = read.result()
        with self._lock:
            if revision != self._revision:
                self._cache.clear()
                self._revision = revision

    @property
    def revision(self) -> int | None:
        """The directory's revision as of the last :meth:`refresh` (``None`` before the first)."""
        with self._lock:
            return self._revision

    def is_operator(self, agent: str) -> bool:
        """Whether ``agent`` is a trusted name (the scheduler's own broker user): it may act on any batch."""
        return agent in self._trusted

    def standing(self, agent: str) -> Standing | None:
        """The agent's standing; ``None`` means unknown (deny).

        A ``trusted`` name without a policy document of its own is unrestricted:
        the scheduler's own broker user (it can already do anything on the
        broker) and, in development mode only, the anonymous agent.
        """
        with self._lock:
            if agent in self._cache:
                return self._cache[agent]
            revision = self._revision
        found = self._dir.standing(agent)
        if found is None and agent in self._trusted:
            found = self._unrestricted
        with self._lock:
            if self._revision == revision:  # not cleared meanwhile: still current
                self._cache[agent] = found
        return found


Refusal = tuple[ErrorCode, str]


class Meter:
    """Rate limit and per-period quotas on the atomic counters.

    Request counts go through :class:`~aiosd.daemon.access.allowance.Allowances`
    (taken ahead in blocks while an agent's calls come quickly), except the
    period's count of a batch that must read the period's tokens: LLM calls of
    an agent with a token quota, counted with one write that returns the
    document.
    """

    def __init__(self, counters: Counters, policies: PolicyLookup, allowances: Allowances | None = None) -> None:
        self._counters = counters
        self._policies = policies
        self._allowances = allowances or Allowances(counters)
        self._charges: Spent = {}
        self._charges_lock = threading.Lock()
        self._revision: int | None = None
        self._revision_lock = threading.Lock()

    def admit_many(self, agent: str, policy: Policy, syscalls: list[str]) -> list[Refusal | None]:
        """Count a batch of one agent's requests with at most one write per counter.

        If the whole batch does not fit a limit, its requests are counted one
        by one instead, so exactly as many are admitted as the limits allow.
        """
        n = len(syscalls)
        rate = _rate_counter(agent, policy)
        if rate is not None and not self._allowances.take(rate, n, _rate_limit(policy)):
            return [_rate_refusal(agent, policy)] if n == 1 else self._one_by_one(agent, policy, syscalls)
        out = self._count_period(agent, policy, syscalls)
        if out is None:
            if rate is not None:
                self._allowances.give(rate, n, _rate_limit(policy))
            return [_request_refusal(policy)] if n == 1 else self._one_by_one(agent, policy, syscalls)
        refused = sum(1 for r in out if r is not None)
        if refused and rate is not None:  # a refused request does not count against the limits it passed
            self._allowances.give(rate, refused, _rate_limit(policy))
        return out

    def _count_period(self, agent: str, policy: Policy, syscalls: list[str]) -> list[Refusal | None] | None:
        """Count the batch in its quota period: the token refusals per call, or ``None`` if the requests do not fit.

        LLM calls of an agent with a token quota are counted with one write
        that reads the period's tokens back; the rest through the allowances.
        """
        n = len(syscalls)
        quota = policy.tokens_per_period
        if quota is None or not any(served_by(s) == "llm" for s in syscalls):
            return (
                [None] * n
                if self._allowances.take(_period_counter(agent, policy), n, policy.requests_per_period)
                else None
            )
        period = period_window(agent, policy.quota_period)
        doc = self._counters.reserve(
            period.key,
            period_amounts(requests=n),
            {"requests": policy.requests_per_period},
            _extra(agent, "period", period),
        )
        if doc is None:
            return None
        used = _tokens(doc)
        refusal = (
            ErrorCode.QUOTA_EXCEEDED,
            f"token quota of {quota} per {policy.quota_period} is used up ({used} used)",
        )
        out: list[Refusal | None] = [refusal if used >= quota and served_by(s) == "llm" else None for s in syscalls]
        refused = sum(1 for r in out if r is not None)
        if refused:
            self._counters.add(period.key, period_amounts(requests=-refused), {})
        return out

    def _one_by_one(self, agent: str, policy: Policy, syscalls: list[str]) -> list[Refusal | None]:
        return [self.admit_many(agent, policy, [s])[0] for s in syscalls]

    def observe(self, revision: int | None) -> None:
        """The directory's revision before a batch is admitted: a change gives back every block first.

        A block was reserved under the old policy's limits; the new ones must
        see only the calls really admitted.
        """
        with self._revision_lock:
            if revision == self._revision:
                return
            first = self._revision is None
            self._revision = revision
            if not first:
                self._allowances.settle(everything=True)

    def settle(self, everything: bool = False) -> None:
        """The periodic job: write counted tokens and request counts, give back idle blocks."""
        self.flush_charges()
        self._allowances.settle(everything)

    def charge_tokens(self, agent: str, usage: Usage, calls: int = 1) -> None:
        """Count the tokens of ``calls`` finished LLM calls; written by :meth:`flush_charges`.

        Charges are written in batches: an agent's before a batch with LLM
        calls of it is admitted, if it has a token quota (so a call answered
        before another is sent counts against it, as if written at once), and
        everyone's by the periodic job (the others only inform).
        """
        with self._charges_lock:
            tally(self._charges, agent, usage, calls)

    def flush_charges(self, before: set[str] | None = None) -> None:
        """Write the counted tokens to each agent's current quota period (one write per agent).

        ``before``: only those of these agents that have a token quota, before
        their LLM calls are admitted; ``None``: every agent's.
        """
        if before is not None:
            before = {agent for agent in before if self._token_quota(agent)}
            if not before:
                return
        with self._charges_lock:
            if before is None:
                charges, self._charges = self._charges, {}
            else:
                charges = {agent: self._charges.pop(agent) for agent in before if agent in self._charges}
        for agent, (usage, calls) in charges.items():
            standing = self._policies.standing(agent)
            period = period_window(agent, standing.policy.quota_period if standing else "day")
            amounts = period_amounts(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_tokens=usage.cached_tokens,
                llm_calls=calls,
            )
            self._counters.add(period.key, amounts, _extra(agent, "period", period))

    def _token_quota(self, agent: str) -> bool:
        standing = self._policies.standing(agent)
        return standing is not None and standing.policy.tokens_per_period is not None


def _rate_limit(policy: Policy) -> int | None:
    return policy.rate_limit.requests if policy.rate_limit is not None else None


def _rate_counter(agent: str, policy: Policy) -> Counter | None:
    if policy.rate_limit is None:
        return None
    window = rate_window(agent, policy.rate_limit.seconds)
    return Counter(window.key, "requests", ("requests",), _extra(agent, "rate", window))


def _period_counter(agent: str, policy: Policy) -> Counter:
    window = period_window(agent, policy.quota_period)
    return Counter(window.key, "requests", PERIOD_FIELDS, _extra(agent, "period", window))


def _rate_refusal(agent: str, policy: Policy) -> Refusal:
    limit = policy.rate_limit
    assert limit is not None
    window = rate_window(agent, limit.seconds)
    wait = max(window.expires_at.timestamp() - limit.seconds - utcnow().timestamp(), 0.0)
    return (
        ErrorCode.RATE_LIMITED,
        f"rate limit of {limit.requests} requests per {limit.seconds}s reached; retry in {wait:.1f}s",
    )


def _request_refusal(policy: Policy) -> Refusal:
    quota = policy.requests_per_period
    return (ErrorCode.QUOTA_EXCEEDED, f"request quota of {quota} per {policy.quota_period} is used up")


#: ``(syscall, args) -> True`` when a call waits for a human whatever the policy says (irreversible tools).
Irreversible = Callable[[str, dict[str, Any]], bool]


def never_irreversible(_syscall: str, _args: dict[str, Any]) -> bool:
    """The :data:`Irreversible` of a scheduler without tools."""
    return False


@dataclass(frozen=True)
class Admission:
    """An authorizer's yes: the priority the call gets and whether a human must approve it."""

    priority: int
    needs_approval: bool = False


@dataclass(frozen=True)
class Ask:
    """One call to authorize: who, what (validated arguments) and the priority asked for."""

    agent: str
    request: Request
    args: BaseModel
    priority: int


class Refused(DaemonError):
    """An authorizer's no: the protocol code, a reason for the caller, the resource it concerned."""

    def __init__(self, code: ErrorCode, reason: str, resource: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.resource = resource


class PolicyAuthorizer:
    """The scheduler's authorizer (see :class:`~aiosd.daemon.pipeline.intake.Authorizer`): deny by default."""

    def __init__(self, policies: PolicyLookup, meter: Meter, irreversible: Irreversible = never_irreversible) -> None:
        self._policies = policies
        self._meter = meter
        self._irreversible = irreversible

    def authorize_many(self, asks: list[Ask]) -> list[Admission | Refused]:
        """Decide a batch: the checks that count nothing per call, then the counters once per agent.

        The policy cache is refreshed first (see :class:`PolicyLookup`), so an
        operator's change applies to the next syscall.
        """
        self._policies.refresh()
        self._meter.observe(self._policies.revision)
        # Tokens of calls answered so far count before the next LLM call of an agent with a token quota.
        self._meter.flush_charges({ask.agent for ask in asks if served_by(ask.request.syscall) == "llm"})
        verdicts: list[Admission | Refused | None] = [None] * len(asks)
        metered: dict[str, tuple[Standing, list[int]]] = {}
        for i, ask in enumerate(asks):
            standing = self._policies.standing(ask.agent)
            refusal = refusal_of(ask.agent, standing, ask.request.syscall, ask.args)
            if refusal is not None or standing is None:
                code, reason = refusal or (ErrorCode.DENIED, f"agent {ask.agent!r} is not allowed")
                verdicts[i] = Refused(code, reason, resource_of(ask.agent, ask.request))
            else:
                metered.setdefault(ask.agent, (standing, []))[1].append(i)
        for agent, (standing, indexes) in metered.items():
            refusals = self._meter.admit_many(agent, standing.policy, [asks[i].request.syscall for i in indexes])
            for i, refusal in zip(indexes, refusals, strict=True):
                verdicts[i] = self._admission(asks[i], standing.policy, refusal)
        return [v for v in verdicts if v is not None]

    def _admission(self, ask: Ask, policy: Policy, refusal: Refusal | None) -> Admission | Refused:
        if refusal is not None:
            return Refused(refusal[0], refusal[1], resource_of(ask.agent, ask.request))
        request = ask.request
        approval = policy.needs_approval(request.syscall) or self._irreversible(request.syscall, request.args)
        return Admission(min(ask.priority, policy.max_priority), approval)


def refusal_of(agent: str, standing: Standing | None, syscall: str, args: BaseModel | None) -> Refusal | None:
    """The checks that count nothing: registered, enabled, syscall and model allowed."""
    if standing is None:
        return (
            ErrorCode.DENIED,
            f"agent {agent!r} has no policy (deny by default): register it with `aiosd agents add {agent}`",
        )
    if standing.disabled:
        return ErrorCode.DENIED, f"agent {agent!r} is disabled"
    policy = standing.policy
    if not policy.allows(syscall):
        allowed = ", ".join(policy.syscalls) or "nothing"
        return ErrorCode.DENIED, f"the policy of {agent!r} does not allow {syscall} (allowed: {allowed})"
    tool = getattr(args, "name", None) if served_by(syscall) == "tools" else None
    if tool is not None and not policy.allows_tool(tool):
        return (
            ErrorCode.DENIED,
            f"the policy of {agent!r} does not allow tool {tool!r}; allowed: {', '.join(policy.tools) or 'none'}",
        )
    model = getattr(args, "model", None)
    if served_by(syscall) == "llm" and not policy.allows_model(model):
        which = f"model {model!r}" if model else "an unnamed model (name one in args.model)"
        return (
            ErrorCode.DENIED,
            f"the policy of {agent!r} does not allow {which}; allowed: {', '.join(policy.models) or 'none'}",
        )
    return None


def _tokens(doc: Doc) -> int:
    return int(doc.get("prompt_tokens") or 0) + int(doc.get("completion_tokens") or 0)


def _extra(agent: str, kind: str, window: Window) -> Doc:
    """Fields of a counter document when it is created (the prune job reads ``expires_at``)."""
    return {"agent": agent, "kind": kind, "window": window.label, "expires_at": window.expires_at}
