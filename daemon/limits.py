"""Limits enforced inside kernel services: memory sharing and quota, concurrent LLM calls.

These cannot be decided at intake: whether a note may be read depends on its
owner, a quota on the note's size, and how many LLM calls an agent has on
workers changes while its calls wait in the queue.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from pymongo.collection import Collection

from .access import Policies
from .counters import Counters, memory_key
from .errors import QuotaExceeded
from .policy import Policy
from .store import Doc

#: Live-record states in which an LLM call occupies a worker.
ON_WORKER = ("leased", "settling")


class MemoryGuard:
    """Who may read whose memory, and each agent's memory quota."""

    def __init__(self, policies: Policies, counters: Counters) -> None:
        self._policies = policies
        self._counters = counters

    def can_read(self, reader: str, owner: str) -> bool:
        """Whether ``reader`` may read ``owner``'s notes: its own, an explicit grant, or a shared group."""
        if reader == owner:
            return True
        owner_s, reader_s = self._policies.standing(owner), self._policies.standing(reader)
        if owner_s is None or reader_s is None:
            return False
        if owner_s.policy.grants_read(reader, "memory"):
            return True
        return bool(set(owner_s.policy.groups) & set(reader_s.policy.groups))

    def reserve(self, agent: str, notes: int, nbytes: int) -> None:
        """Count ``notes`` more notes and ``nbytes`` more bytes; raise :class:`QuotaExceeded` past a limit."""
        policy = self._policy(agent)
        limits = {"notes": policy.memory_notes, "bytes": policy.memory_bytes}
        extra: Doc = {"agent": agent, "kind": "memory"}
        if self._counters.reserve(memory_key(agent), {"notes": notes, "bytes": nbytes}, limits, extra) is None:
            raise QuotaExceeded(
                f"memory quota reached: at most {_limit(policy.memory_notes)} notes and "
                f"{_limit(policy.memory_bytes)} bytes of content (delete notes to make room)"
            )

    def release(self, agent: str, notes: int, nbytes: int) -> None:
        """Give back what :meth:`reserve` counted (a note deleted or shrunk)."""
        self._counters.add(memory_key(agent), {"notes": -notes, "bytes": -nbytes}, {"agent": agent, "kind": "memory"})

    def _policy(self, agent: str) -> Policy:
        standing = self._policies.standing(agent)
        # An agent without a policy never gets this far (intake denies it); be strict anyway.
        return standing.policy if standing is not None else Policy(memory_notes=0, memory_bytes=0)


def _limit(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


class LlmCaps:
    """Per-agent limits on LLM calls held by workers at once (``max_concurrent_llm``)."""

    def __init__(self, policies: Policies, live: Collection[Doc]) -> None:
        self._policies = policies
        self._live = live

    def begin(self) -> CapRound:
        """Snapshot of calls on workers, per agent, for one dispatch round."""
        on_worker = self._live.find({"state": {"$in": list(ON_WORKER)}}, {"agent": 1, "syscall": 1})
        held = Counter(str(d.get("agent")) for d in on_worker if str(d.get("syscall", "")).startswith("llm."))
        return CapRound(held, self._limit)

    def _limit(self, agent: str) -> int | None:
        standing = self._policies.standing(agent)
        return standing.policy.max_concurrent_llm if standing is not None else None


class CapRound:
    """One round's view: skip an agent's queued calls while it holds its maximum."""

    def __init__(self, held: Counter[str], limit_of: Callable[[str], int | None]) -> None:
        self._held = held
        self._limit_of = limit_of
        self._limits: dict[str, int | None] = {}

    def admits(self, agent: str) -> bool:
        """Whether ``agent`` may get one more call leased now."""
        if agent not in self._limits:
            self._limits[agent] = self._limit_of(agent)
        limit = self._limits[agent]
        return limit is None or self._held[agent] < limit

    def took(self, agent: str) -> None:
        """``agent`` got a call leased in this round."""
        self._held[agent] += 1
