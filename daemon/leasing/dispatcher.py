"""The dispatcher thread: admission, leasing, lease expiry and dead workers.

Each round it (1) re-queues calls whose lease expired and those held by
workers that stopped heartbeating, then (2) revokes the leases the router
takes back (the other calls on a worker it just reserved for interactive
calls: an interactive call among the round's calls reserves it before any
call is placed), whose slots are free at once, and (3) leases queued calls,
in the policy's order, to workers with free capacity — never more than a
worker's capacity, so the backlog waits in the lease book, not in worker
memory. With no free slot it still looks at the head of the queue, so an
interactive call there reserves its worker and is leased in the same round.
It wakes when something changes (a call queued, a worker freed) and at least
every ``IDLE_WAIT`` seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from aiosd.daemon.leasing.book import LeaseBook
from aiosd.daemon.leasing.caps import LlmCaps
from aiosd.daemon.leasing.fleet import Member
from aiosd.daemon.leasing.ordering import Ordering
from aiosd.daemon.leasing.routing import Routing
from aiosd.daemon.leasing.work import LeasedWork
from aiosd.daemon.store import Doc
from aiosd.sdk.cluster import Lease, Revoke, Snapshot
from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.protocol import ErrorCode, utcnow

log = get_logger(__name__)

IDLE_WAIT = 0.5
#: Queued calls considered per round, per free worker slot.
WINDOW_PER_SLOT = 4
MIN_WINDOW = 32

PublishLease = Callable[[str, bytes], None]


class Dispatcher:
    """Runs the leasing loop on its own thread."""

    def __init__(
        self,
        work: LeasedWork,
        ordering: Ordering,
        router: Routing,
        publish: PublishLease,
        wakeup: threading.Event,
        *,
        lease_ttl: float,
        caps: LlmCaps | None = None,
    ) -> None:
        self._llm = work
        self._book: LeaseBook = work.book
        self._policy = ordering
        self._router = router
        self._send = publish
        self._lease_ttl = lease_ttl
        self._caps = caps
        self._wake = wakeup
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aiosd-dispatcher", daemon=True)

    def start(self) -> None:
        """Start the loop."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and wait for the round in progress."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(IDLE_WAIT)
            self._wake.clear()
            try:
                self.round()
            except Exception:  # a failing round must not kill leasing; the next one retries
                log.exception("dispatch_round_failed")
                self._stop.wait(1.0)

    def round(self) -> None:
        """One pass: reap, expire, lease.

        The book's transitions are written by the periodic journal job, not
        here: a call queued while they are written would wait for the write.
        """
        for worker in self._llm.fleet.silent():
            log.warning("worker_dead", worker=worker)
            self._llm.lost(worker, reason=f"worker {worker} stopped heartbeating")
        for entry in self._book.expired():
            self._llm.expire(entry, reason="lease expired")
        self._lease()

    def _lease(self) -> None:
        members = self._llm.fleet.snapshot()
        free = sum(m.free for m in members.values())
        # With no free slot, the head of the queue is still looked at: an interactive call there opens its
        # lane now, and the slots its revokes free are its own.
        taken = self._book.take(max(free * WINDOW_PER_SLOT, MIN_WINDOW) if free else 1)
        if not taken:
            return
        self._router.begin(members)
        self._router.expect(taken)
        # Before any lease of this round: a worker gets its revoke ahead of the interactive call leased to it.
        free += self._revoke(self._router.preempted(), members)
        caps = self._caps.begin() if self._caps is not None else None
        granted: list[Doc] = []
        for entry in taken:
            if free == 0:
                break
            if entry.get("deadline") is not None and entry["deadline"] < utcnow():
                self._llm.fail(entry, None, ErrorCode.DEADLINE_EXCEEDED, "deadline passed while the call was queued")
                continue
            capped = caps if entry["kind"] == "llm" else None  # tool calls do not count
            if capped is not None and not capped.admits(entry["agent"]):
                continue  # the agent holds its max_concurrent_llm: its calls wait, others go
            worker = self._router.choose(entry, members)
            if worker is None:  # no worker can take it, or the router holds it for its (busy) worker
                self._unservable(entry, members)
                continue
            if self._grant(entry, worker, members[worker]):
                granted.append(entry)
                free -= 1
                if capped is not None:
                    capped.took(entry["agent"])
        self._book.put_back([e for e in taken if e["state"] == "queued"])
        self._publish(granted)
        self._revoke(self._router.preempted(), members)  # workers reserved during the round (none, usually)

    def _grant(self, entry: Doc, worker: str, member: Member) -> bool:
        durable = not self._llm.may_retry(entry)  # an irreversible tool's lease is written before it goes out
        leased = self._book.grant(entry, worker, self._lease_ttl, durable=durable)
        if leased is None:
            return False  # settled or failed meanwhile
        lease_id = leased["lease"]["id"]
        member.leases.add(lease_id)
        self._llm.fleet.assign(worker, lease_id)
        self._router.served(entry, worker)
        self._policy.granted(entry)
        return True

    def _publish(self, granted: list[Doc]) -> None:
        """Send the round's leases; their arguments are read with one query."""
        records = self._book.read([e["_id"] for e in granted])
        for entry in granted:
            record = records.get(entry["_id"])
            if record is None:
                continue  # finished meanwhile (a late outcome of an earlier lease): nothing to run
            lease_doc = entry["lease"]
            snapshot = record.get("snapshot")
            lease = Lease(
                lease_id=lease_doc["id"],
                key=entry["_id"],
                agent=entry["agent"],
                call_id=record["id"],
                syscall=entry["syscall"],
                args=_lease_args(record),
                resume=Snapshot(**snapshot) if snapshot else None,
                slice_tokens=self._policy.slice_tokens,
                attempt=int(entry["attempts"] or 1),
                expires_at=lease_doc["expires_at"],
            )
            self._send(lease_doc["worker"], lease.model_dump_json().encode())
            log.debug(
                "leased", key=entry["_id"], worker=lease_doc["worker"], lease=lease.lease_id, attempt=lease.attempt
            )

    def _revoke(self, preempted: dict[str, list[str]], members: dict[str, Member]) -> int:
        """Take leases back (their worker was reserved for interactive calls): it stops them, they are queued again.

        Their slots are free at once (the worker receives the revoke before any later lease), so an interactive
        call need not wait for the ``released`` outcomes; each call stays leased in the book until its outcome
        comes. Returns the number of slots freed.
        """
        freed = 0
        for worker, lease_ids in preempted.items():
            revoke = Revoke(lease_ids=lease_ids, reason="the worker is reserved for interactive calls")
            self._send(worker, revoke.model_dump_json().encode())
            log.info("leases_revoked", worker=worker, leases=len(lease_ids))
            member = members.get(worker)
            for lease_id in lease_ids:
                self._llm.fleet.release(worker, lease_id)
                if member is not None and lease_id in member.leases:
                    member.leases.discard(lease_id)
                    freed += 1
        return freed

    def _unservable(self, entry: Doc, members: dict[str, Member]) -> None:
        if entry["kind"] != "llm":
            return  # tool calls wait for a tool runner
        model = (entry.get("args") or {}).get("model")
        served = {m.state.model for m in members.values() if m.state.kind == "llm"}
        if model and members and model not in served:
            self._llm.fail(
                entry,
                None,
                ErrorCode.INVALID_ARGS,
                f"no worker serves model {model!r}; served: {', '.join(sorted(served))}",
            )


def _lease_args(record: Doc) -> dict[str, Any]:
    """The arguments a worker gets: a session call's fixed prompt replaces its own messages."""
    args = dict(record.get("args") or {})
    if record.get("prompt") is not None:
        args["messages"] = record["prompt"]
    return args
