"""Per-agent caps on LLM calls held by workers at once (``max_concurrent_llm``).

This cannot be decided at intake: how many LLM calls an agent has on workers
changes while its calls wait in the queue, so the dispatcher asks each round.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from pymongo.collection import Collection

from aiosd.daemon.access.authorizer import PolicyLookup
from aiosd.daemon.store import Doc
from aiosd.sdk.syscalls import served_by

#: Live-record states in which an LLM call occupies a worker.
ON_WORKER = ("leased", "settling")


class LlmCaps:
    """Per-agent limits on LLM calls held by workers at once (``max_concurrent_llm``)."""

    def __init__(self, policies: PolicyLookup, live: Collection[Doc]) -> None:
        self._policies = policies
        self._live = live

    def begin(self) -> CapRound:
        """Snapshot of calls on workers, per agent, for one dispatch round."""
        on_worker = self._live.find({"state": {"$in": list(ON_WORKER)}}, {"agent": 1, "syscall": 1})
        held = Counter(str(d.get("agent")) for d in on_worker if served_by(str(d.get("syscall", ""))) == "llm")
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
