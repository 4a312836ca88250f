"""What the agents' policies say about memory: who may read whose notes, and the quota.

The memory service asks this guard (see :class:`~.service.MemoryGuard`); it
cannot be decided at intake: whether a note may be read depends on its owner,
a quota on the note's size.
"""

from __future__ import annotations

from aiosd.daemon.access.authorizer import PolicyLookup
from aiosd.daemon.access.counters import Counters, memory_key
from aiosd.daemon.access.policy import Policy
from aiosd.daemon.errors import QuotaExceeded
from aiosd.daemon.store import Doc


class PolicyMemoryGuard:
    """Who may read whose memory, and each agent's memory quota."""

    def __init__(self, policies: PolicyLookup, counters: Counters) -> None:
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

    def recount(self, agent: str, notes: int, nbytes: int) -> None:
        """Set the agent's memory usage to what its notes really hold (after a crash)."""
        self._counters.set(memory_key(agent), {"notes": notes, "bytes": nbytes}, {"agent": agent, "kind": "memory"})

    def release(self, agent: str, notes: int, nbytes: int) -> None:
        """Give back what :meth:`reserve` counted (a note deleted or shrunk)."""
        self._counters.add(memory_key(agent), {"notes": -notes, "bytes": -nbytes}, {"agent": agent, "kind": "memory"})

    def _policy(self, agent: str) -> Policy:
        standing = self._policies.standing(agent)
        # An agent without a policy never gets this far (intake denies it); be strict anyway.
        return standing.policy if standing is not None else Policy(memory_notes=0, memory_bytes=0)


def _limit(value: int | None) -> str:
    return "unlimited" if value is None else str(value)
