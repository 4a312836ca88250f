"""Task leases: which runner may act for which task's agent, right now.

``task.start`` grants a runner a lease (a random token) on one task; the
runner names the task and the token in every syscall it makes for the
program (:attr:`~aiosd.sdk.protocol.Request.task`), and the scheduler runs
that call as the task's agent. A lease is the only thing that lets a runner
act for an agent: a call for a task the runner does not hold, with a stale
token (the task was taken over after the lease ran out), or for a task that
is no longer running is denied.

The scheduler that owns the queue keeps leases in memory; the task document
holds the current runner and token, so after a restart a lease is read back
by ``_id`` the first time it is named (and given a fresh lifetime: the runner
that holds it is still heartbeating).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

from aiosd.daemon.services.tasks.store import TaskStore
from aiosd.daemon.store import Doc
from aiosd.sdk.tasks import TaskBinding, TaskState


@dataclass
class Lease:
    """A runner's hold on a running task."""

    task: str
    agent: str
    runner: str
    token: str
    priority: int
    batch: str | None
    expires: float

    def live(self, now: float | None = None) -> bool:
        """Whether the lease has not run out."""
        return (now if now is not None else time.monotonic()) < self.expires


class BindingRefused(Exception):
    """Why a runner may not make a call for a task."""


class TaskLeases:
    """The leases of running tasks (thread-safe)."""

    def __init__(self, store: TaskStore, ttl: float) -> None:
        self._store = store
        self.ttl = ttl
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()

    def get(self, task_id: str) -> Lease | None:
        """The task's current lease: from memory, else from its document (one read by ``_id``)."""
        with self._lock:
            lease = self._leases.get(task_id)
        if lease is not None:
            return lease
        doc = self._store.get(task_id)
        if doc is None or doc.get("state") != TaskState.RUNNING.value or not doc.get("lease"):
            return None
        held = doc["lease"]
        lease = Lease(
            task_id,
            str(doc["agent"]),
            str(held["runner"]),
            str(held["token"]),
            int(doc.get("priority") or 0),
            doc.get("batch"),
            time.monotonic() + self.ttl,
        )
        with self._lock:
            return self._leases.setdefault(task_id, lease)

    def grant(self, doc: Doc, runner: str, token: str) -> Lease:
        """The new lease on a task just (re)started; it replaces any older one."""
        lease = Lease(
            str(doc["_id"]),
            str(doc["agent"]),
            runner,
            token,
            int(doc.get("priority") or 0),
            doc.get("batch"),
            time.monotonic() + self.ttl,
        )
        with self._lock:
            self._leases[lease.task] = lease
        return lease

    def drop(self, task_id: str) -> None:
        """The task ended or was cancelled: its lease is void."""
        with self._lock:
            self._leases.pop(task_id, None)

    def renew(self, runner: str, bindings: list[TaskBinding]) -> list[str]:
        """Extend the runner's leases; return the ids of tasks it no longer holds.

        The tasks are read back (one read by ``_id``): a task an operator
        cancelled from the command line, outside this scheduler, is lost to
        its runner at its next heartbeat.
        """
        ids = [b.id for b in bindings]
        stored = {d["_id"]: d for d in self._store.get_many(ids, {"state": 1, "lease": 1})} if ids else {}
        lost: list[str] = []
        now = time.monotonic()
        for binding in bindings:
            doc = stored.get(binding.id) or {}
            held = doc.get("lease") or {}
            if doc.get("state") != TaskState.RUNNING.value or held.get("token") != binding.lease:
                self.drop(binding.id)
                lost.append(binding.id)
                continue
            lease = self.get(binding.id)
            if lease is None or lease.runner != runner or lease.token != binding.lease:
                lost.append(binding.id)
                continue
            lease.expires = now + self.ttl
        return lost

    def bind(self, sender: str, binding: TaskBinding) -> Lease:
        """The lease that lets ``sender`` make a call for ``binding``'s task, or :class:`BindingRefused`."""
        lease = self.get(binding.id)
        if lease is None:
            raise BindingRefused(f"task {binding.id!r} is not running: no runner may act for it")
        if lease.runner != sender or not secrets.compare_digest(lease.token, binding.lease):
            raise BindingRefused(f"runner {sender!r} does not hold the lease on task {binding.id!r}")
        return lease

    def __len__(self) -> int:
        with self._lock:
            return len(self._leases)

    def running_of(self, batch: str) -> list[str]:
        """Ids of the tasks of ``batch`` this scheduler holds leases for."""
        with self._lock:
            return [lease.task for lease in self._leases.values() if lease.batch == batch]

    def running_in(self, batch: str) -> int:
        """Tasks of ``batch`` this scheduler knows to be running."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for lease in self._leases.values() if lease.batch == batch and lease.live(now))
