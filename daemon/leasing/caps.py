"""Per-agent caps on LLM calls held by workers at once (``max_concurrent_llm``).

This cannot be decided at intake: how many LLM calls an agent has on workers
changes while its calls wait in the queue, so the dispatcher asks each round.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from aiosd.daemon.access.authorizer import PolicyLookup


class LlmCaps:
    """Per-agent limits on LLM calls held by workers at once (``max_concurrent_llm``)."""

    def __init__(self, policies: PolicyLookup, held: Callable[[], Counter[str]]) -> None:
        self._policies = policies
        self._held = held

    def begin(self) -> CapRound:
        """Calls on workers, per agent (from the lease book), for one dispatch round."""
        return CapRound(self._held(), self._limit)

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
