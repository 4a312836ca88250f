"""The fleet: which workers are alive, what they serve and how loaded they are.

The scheduler's view of a worker's load is the set of leases it granted to
it and not yet settled; admission never lets that exceed the worker's
capacity. Every heartbeat is also written to MongoDB (collection ``workers``)
so ``aiosd worker --check`` and operators can see the fleet.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from pymongo.collection import Collection

from aiosd.daemon.store import Doc
from aiosd.sdk.cluster import WorkerState
from aiosd.sdk.protocol import utcnow
from aiosd.sdk.syscalls import served_by


@dataclass
class Member:
    """One worker as the scheduler sees it."""

    state: WorkerState
    last_seen: float
    leases: set[str] = field(default_factory=set)

    @property
    def free(self) -> int:
        """Calls it may still be given."""
        if self.state.draining or not self.state.healthy:
            return 0
        return max(self.state.capacity - len(self.leases), 0)

    @property
    def load(self) -> float:
        """Fraction of its capacity in use."""
        return len(self.leases) / self.state.capacity


def able_workers(record: Doc, members: dict[str, Member], with_room: bool = True) -> dict[str, Member]:
    """The members that could take ``record``: the right kind (LLM or tools) and model, healthy, not draining,
    and (``with_room``) with a free slot now."""
    kind = served_by(record["syscall"])
    model = (record.get("args") or {}).get("model") if kind == "llm" else None
    return {
        wid: m
        for wid, m in members.items()
        if (m.free > 0 if with_room else m.state.healthy and not m.state.draining)
        and m.state.kind == kind
        and (not model or m.state.model == model)
    }


class Fleet:
    """Thread-safe registry of live workers."""

    def __init__(self, collection: Collection[Doc], timeout: float) -> None:
        self._col = collection
        self._timeout = timeout
        self._members: dict[str, Member] = {}
        self._lock = threading.Lock()

    def heartbeat(self, state: WorkerState) -> bool:
        """Record a heartbeat; ``True`` when it registers a new worker."""
        with self._lock:
            member = self._members.get(state.worker_id)
            new = member is None
            if member is None:
                # After a scheduler restart the worker's own list is the best count of its load.
                self._members[state.worker_id] = Member(state, time.monotonic(), set(state.leases))
            else:
                member.state, member.last_seen = state, time.monotonic()
        doc = {
            **state.model_dump(exclude={"leases"}),
            "leases": len(state.leases),
            "last_seen": utcnow(),
            "alive": True,
        }
        self._col.replace_one({"_id": state.worker_id}, doc, upsert=True)
        return new

    def remove(self, worker_id: str) -> set[str]:
        """Forget a worker (goodbye or death); return the leases it was given."""
        with self._lock:
            member = self._members.pop(worker_id, None)
        self._col.update_one({"_id": worker_id}, {"$set": {"alive": False, "healthy": False}})
        return member.leases if member else set()

    def silent(self) -> list[str]:
        """Workers whose last heartbeat is older than the timeout."""
        cutoff = time.monotonic() - self._timeout
        with self._lock:
            return [wid for wid, m in self._members.items() if m.last_seen < cutoff]

    def assign(self, worker_id: str, lease_id: str) -> None:
        """Count a granted lease against the worker's capacity."""
        with self._lock:
            if worker_id in self._members:
                self._members[worker_id].leases.add(lease_id)

    def release(self, worker_id: str, lease_id: str) -> None:
        """A lease ended (settled, expired, handed back)."""
        with self._lock:
            member = self._members.get(worker_id)
            if member is not None:
                member.leases.discard(lease_id)

    def snapshot(self) -> dict[str, Member]:
        """A copy of the members for a dispatch round."""
        with self._lock:
            return {wid: Member(m.state, m.last_seen, set(m.leases)) for wid, m in self._members.items()}

    def context_lengths(self) -> list[int]:
        """Context lengths reported by live LLM workers."""
        with self._lock:
            return [
                m.state.context_length
                for m in self._members.values()
                if m.state.kind == "llm" and m.state.context_length
            ]

    def models(self) -> set[str]:
        """Models served by live workers."""
        with self._lock:
            return {m.state.model for m in self._members.values()}
