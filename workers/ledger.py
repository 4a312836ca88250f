"""The leases a worker holds and the outcomes waiting to be published.

Owned by the main thread, except :meth:`Ledger.finish`, which the runner
thread calls when a call ends: it only puts the outcome on a thread-safe
queue that the main thread drains. A lease is *held* from its delivery until
its outcome is confirmed by the broker; heartbeats list the held leases so
the scheduler extends them, and never more than the capacity are held.
"""

from __future__ import annotations

import concurrent.futures
import queue
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from aiosd.sdk.cluster import Lease, Outcome

from .calls import error_outcome, released_outcome

#: Why unfinished leases are handed back.
STOPPING = "the worker is stopping"


@dataclass
class Held:
    """One lease from delivery to confirmed outcome."""

    lease: Lease
    tag: int
    #: The connection it came on: a delivery tag is only valid there.
    connection: object
    future: concurrent.futures.Future[Outcome] | None = None


class Ledger:
    """Held leases (by id) and the outbox of their outcomes, in completion order."""

    def __init__(self, worker_id: str, interrupted: Callable[[Lease, str, str], Outcome] = released_outcome) -> None:
        self.worker_id = worker_id
        #: The outcome of a call cancelled while it ran (``(lease, worker_id, reason)``).
        self._interrupted = interrupted
        self.held: dict[str, Held] = {}
        #: Why a lease's call was cancelled, when the scheduler revoked it (else: the worker is stopping).
        self._reasons: dict[str, str] = {}
        self._finished: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self.outbox: deque[Outcome] = deque()

    def hold(self, held: Held) -> None:
        """Record a delivered lease."""
        self.held[held.lease.lease_id] = held

    def finish(self, lease: Lease, future: concurrent.futures.Future[Outcome]) -> None:
        """Done-callback of a call's future (any thread): queue its one outcome."""
        if future.cancelled():
            outcome = self._interrupted(lease, self.worker_id, self._reasons.pop(lease.lease_id, STOPPING))
        elif (exc := future.exception()) is not None:
            # run_lease reports failures itself; this is a bug in the worker.
            base = {"worker_id": self.worker_id, "lease_id": lease.lease_id, "key": lease.key, "model": ""}
            outcome = error_outcome(base, exc if isinstance(exc, Exception) else RuntimeError(repr(exc)), 0.0)
        else:
            outcome = future.result()
        self._finished.put(outcome)

    def release(self, lease: Lease) -> None:
        """Hand back a lease that never started."""
        self._finished.put(released_outcome(lease, self.worker_id, STOPPING))

    def collect(self) -> None:
        """Move finished outcomes into the outbox (main thread)."""
        while True:
            try:
                self.outbox.append(self._finished.get_nowait())
            except queue.Empty:
                return

    def settle(self, lease_id: str) -> Held | None:
        """Forget a lease whose outcome is published (or given up on)."""
        return self.held.pop(lease_id, None)

    def cancel_all(self) -> int:
        """Cancel every running call; each reports ``released`` through :meth:`finish`."""
        return sum(1 for h in list(self.held.values()) if h.future is not None and h.future.cancel())

    def revoke(self, lease_ids: list[str], reason: str) -> int:
        """Cancel the running calls of leases the scheduler took back; each reports ``released``.

        Returns how many were stopped (a lease finished or unknown here is left alone).
        """
        stopped = 0
        for lease_id in lease_ids:
            held = self.held.get(lease_id)
            if held is None or held.future is None:
                continue
            self._reasons[lease_id] = reason or "revoked by the scheduler"  # read by finish, run by cancel()
            if held.future.cancel():
                stopped += 1
            else:
                self._reasons.pop(lease_id, None)
        return stopped

    def lease_ids(self) -> list[str]:
        """Ids of the held leases, for heartbeats."""
        return sorted(self.held)

    def __len__(self) -> int:
        return len(self.held)
