"""Enforcement at intake: the policy, the rate limit and the quotas of the caller.

Checks run cheapest first and all before anything is stored: registered and
enabled, syscall allowed, model allowed, priority (clamped to the policy's
maximum: a scheduling hint is not worth refusing a call over), then the
counters (rate window, then requests and tokens of the quota period). A
refusal is a :class:`Refused` that intake answers and audits as ``denied``
but does not dead-letter: the message was well-formed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from aiosd.daemon.access.counters import Counters, Window, period_amounts, period_window, rate_window
from aiosd.daemon.access.directory import Directory, Standing
from aiosd.daemon.access.policy import Policy, resource_of
from aiosd.daemon.errors import DaemonError
from aiosd.daemon.store import Doc
from aiosd.sdk.protocol import ErrorCode, Request, Usage, utcnow
from aiosd.sdk.syscalls import served_by


class PolicyLookup:
    """The standing of an agent right now; no cache, so a change applies to the next call."""

    def __init__(self, directory: Directory, trusted: frozenset[str] = frozenset()) -> None:
        self._dir = directory
        self._trusted = trusted
        self._unrestricted = Standing(Policy.unrestricted())

    def standing(self, agent: str) -> Standing | None:
        """The agent's standing; ``None`` means unknown (deny).

        A ``trusted`` name without a policy document of its own is unrestricted:
        the scheduler's own broker user (it can already do anything on the
        broker) and, in development mode only, the anonymous agent.
        """
        found = self._dir.standing(agent)
        if found is None and agent in self._trusted:
            return self._unrestricted
        return found


Refusal = tuple[ErrorCode, str]


class Meter:
    """Rate limit and per-period quotas on the atomic counters."""

    def __init__(self, counters: Counters, policies: PolicyLookup) -> None:
        self._counters = counters
        self._policies = policies

    def admit(self, agent: str, policy: Policy, syscall: str) -> Refusal | None:
        """Count one request; return why it is over a limit (and count nothing), or ``None``."""
        rate = self._take_rate(agent, policy)
        if isinstance(rate, tuple):
            return rate
        period = period_window(agent, policy.quota_period)
        doc = self._counters.reserve(
            period.key, period_amounts(requests=1), {"requests": policy.requests_per_period}, _extra(agent, "period", period)
        )
        if doc is None:
            self._give_back(rate, None)
            return ErrorCode.QUOTA_EXCEEDED, f"request quota of {policy.requests_per_period} per {policy.quota_period} is used up"
        quota = policy.tokens_per_period
        if served_by(syscall) == "llm" and quota is not None and _tokens(doc) >= quota:
            self._give_back(rate, period)
            return ErrorCode.QUOTA_EXCEEDED, f"token quota of {quota} per {policy.quota_period} is used up ({_tokens(doc)} used)"
        return None

    def charge_tokens(self, agent: str, usage: Usage) -> None:
        """Add an LLM call's tokens to the agent's current period."""
        standing = self._policies.standing(agent)
        period = period_window(agent, standing.policy.quota_period if standing else "day")
        amounts = period_amounts(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                                 cached_tokens=usage.cached_tokens, llm_calls=1)
        self._counters.add(period.key, amounts, _extra(agent, "period", period))

    def _take_rate(self, agent: str, policy: Policy) -> Window | Refusal | None:
        limit = policy.rate_limit
        if limit is None:
            return None
        window = rate_window(agent, limit.seconds)
        if self._counters.reserve(window.key, {"requests": 1}, {"requests": limit.requests}, _extra(agent, "rate", window)):
            return window
        wait = max(window.expires_at.timestamp() - limit.seconds - utcnow().timestamp(), 0.0)
        return ErrorCode.RATE_LIMITED, f"rate limit of {limit.requests} requests per {limit.seconds}s reached; retry in {wait:.1f}s"

    def _give_back(self, rate: Window | None, period: Window | None) -> None:
        # A refused request does not count against the limits it passed.
        if rate is not None:
            self._counters.add(rate.key, {"requests": -1}, {})
        if period is not None:
            self._counters.add(period.key, period_amounts(requests=-1), {})


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

    def authorize(self, agent: str, request: Request, args: BaseModel, priority: int) -> Admission:
        """Admit the call (with its effective priority) or raise :class:`Refused`."""
        standing = self._policies.standing(agent)
        refusal = refusal_of(agent, standing, request.syscall, args)
        if refusal is None and standing is not None:
            refusal = self._meter.admit(agent, standing.policy, request.syscall)
        if refusal is not None or standing is None:
            code, reason = refusal or (ErrorCode.DENIED, f"agent {agent!r} is not allowed")
            raise Refused(code, reason, resource_of(agent, request))
        policy = standing.policy
        approval = policy.needs_approval(request.syscall) or self._irreversible(request.syscall, request.args)
        return Admission(min(priority, policy.max_priority), approval)


def refusal_of(agent: str, standing: Standing | None, syscall: str, args: BaseModel | None) -> Refusal | None:
    """The checks that count nothing: registered, enabled, syscall and model allowed."""
    if standing is None:
        return ErrorCode.DENIED, f"agent {agent!r} has no policy (deny by default): register it with `aiosd agents add {agent}`"
    if standing.disabled:
        return ErrorCode.DENIED, f"agent {agent!r} is disabled"
    policy = standing.policy
    if not policy.allows(syscall):
        allowed = ", ".join(policy.syscalls) or "nothing"
        return ErrorCode.DENIED, f"the policy of {agent!r} does not allow {syscall} (allowed: {allowed})"
    tool = getattr(args, "name", None) if served_by(syscall) == "tools" else None
    if tool is not None and not policy.allows_tool(tool):
        return ErrorCode.DENIED, f"the policy of {agent!r} does not allow tool {tool!r}; allowed: {', '.join(policy.tools) or 'none'}"
    model = getattr(args, "model", None)
    if served_by(syscall) == "llm" and not policy.allows_model(model):
        which = f"model {model!r}" if model else "an unnamed model (name one in args.model)"
        return ErrorCode.DENIED, f"the policy of {agent!r} does not allow {which}; allowed: {', '.join(policy.models) or 'none'}"
    return None


def _tokens(doc: Doc) -> int:
    return int(doc.get("prompt_tokens") or 0) + int(doc.get("completion_tokens") or 0)


def _extra(agent: str, kind: str, window: Window) -> Doc:
    """Fields of a counter document when it is created (the prune job reads ``expires_at``)."""
    return {"agent": agent, "kind": kind, "window": window.label, "expires_at": window.expires_at}
