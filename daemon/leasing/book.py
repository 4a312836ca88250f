"""The queue and lease book of leased syscalls, in the owning scheduler's memory.

A leased syscall (an LLM or tool call) moves ``queued -> leased`` and back to
``queued`` (time slice over, lease expired, handed back) until a worker's
outcome settles it. The scheduler that owns the queue keeps that state here,
in memory, under one lock; dispatching never scans a collection. Each entry
holds only what ordering, routing and caps need (well under 1 KiB): the
arguments stay in the call's live record and are read, by ``_id`` and a
round at a time, when a lease is granted.

While they fit in :data:`HOT_BYTES`, the live records of calls submitted here
are also kept in memory until the call ends, so neither its lease nor its
reply reads them back (a prompt is the bulk of an LLM call's database work);
past that bound, and after a restart, they are read.

MongoDB stays the durable record. Every transition is also queued as an
update of the live record and written in batches (:meth:`LeaseBook.flush`:
each dispatch round and a periodic job), so a restart rebuilds the book with
:meth:`LeaseBook.load`. What a crash can lose is the last few transitions:
a call may then run again, and the first completion to commit its result wins
(:class:`~aiosd.daemon.pipeline.flow.Completion`). A lease that must not be lost (an
irreversible tool's) is written before it is published.
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.collection import Collection

from aiosd.daemon.leasing.prefixes import shape_of
from aiosd.daemon.leasing.routing import affinity_key
from aiosd.daemon.store import Doc
from aiosd.sdk.cluster import Snapshot
from aiosd.sdk.protocol import Usage, utcnow
from aiosd.sdk.syscalls import served_by

QUEUED, LEASED = "queued", "leased"
#: A live record's state while its settled result is being committed.
SETTLING = "settling"

#: Orders queued entries (smaller first); see :mod:`.ordering`.
OrderKey = Callable[[Doc], tuple[Any, ...]]
#: Told the usage a worker reported for a call or slice (:meth:`.ordering.Ordering.charge`).
Charge = Callable[[Doc, Usage], None]

#: Bytes (of JSON) of live records kept in memory for calls in flight.
HOT_BYTES = 32 * 1024 * 1024


@dataclass
class _Heap:
    """Queued entries in one ordering; stale items (granted, re-queued) are skipped lazily."""

    key: OrderKey
    items: list[tuple[tuple[Any, ...], int, str, int]] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)


class LeaseBook:
    """Queued and leased calls by key; thread-safe."""

    def __init__(self, live: Collection[Doc], order: OrderKey, charge: Charge | None = None) -> None:
        self._live = live
        self._entries: dict[str, Doc] = {}
        self._heap = _Heap(order)
        self._charge = charge
        #: Keys of taken entries: put back unleased, an entry keeps its place (and is not keyed twice).
        self._taken: dict[str, tuple[Any, ...]] = {}
        #: Transitions not written yet, merged into one update per call.
        self._pending: dict[str, Doc] = {}
        #: Live records of calls in flight, with their sizes (see :data:`HOT_BYTES`).
        self._hot: dict[str, tuple[Doc, int]] = {}
        self._hot_bytes = 0
        #: Hot records whose call had left the book at the last flush (see :meth:`_prune_hot`).
        self._gone: set[str] = set()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()

    # -- durable record --------------------------------------------------------------

    def load(self, ttl: float) -> int:
        """Rebuild from the live records after a start; leases get ``ttl`` to be confirmed by heartbeats."""
        found = self._live.find(
            {"state": {"$in": [QUEUED, LEASED, SETTLING]}},
            {"args": 0, "prompt": 0, "snapshot": 0, "reply_to": 0, "correlation_id": 0},
        )
        expires = utcnow() + timedelta(seconds=ttl)
        with self._lock:
            for doc in found:
                entry = _entry(doc, doc.get("hint") or {})
                entry.update({k: doc[k] for k in ("attempts", "slices", "usage", "run_ms") if k in doc})
                if doc["state"] == QUEUED or not doc.get("lease"):
                    self._push(entry)
                else:  # leased, or settling when the scheduler stopped: its worker may still report
                    entry.update(state=LEASED, lease={**doc["lease"], "expires_at": expires})
                self._entries[entry["_id"]] = entry
            return len(self._entries)

    def flush(self) -> None:
        """Write the pending transitions to the live records: one update per call, one bulk write."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            ops = [UpdateOne({"_id": key}, {op: fields for op, fields in update.items() if fields})
                   for key, update in pending.items()]  # fmt: skip
            if ops:
                self._live.bulk_write(ops, ordered=False)
        self._prune_hot()

    def _prune_hot(self) -> None:
        """Drop hot records of calls that left the book without their reply reading them (two flushes ago)."""
        with self._lock:
            gone = {k for k in self._hot if k not in self._entries}
            for key in gone & self._gone:
                self._hot_bytes -= self._hot.pop(key)[1]
            self._gone = gone - self._gone

    def _record(self, key: str, update: Doc) -> None:
        """Merge ``update`` into the call's pending one (a call queued and leased in one round: one write)."""
        merged = self._pending.setdefault(key, {"$set": {}, "$inc": {}, "$unset": {}})
        for name, value in update.get("$set", {}).items():
            merged["$unset"].pop(name, None)
            merged["$set"][name] = value
        for name, value in update.get("$inc", {}).items():
            _add(merged, name, value)
        for name in update.get("$unset", {}):
            merged["$set"].pop(name, None)
            merged["$unset"][name] = ""

    # -- transitions -------------------------------------------------------------------

    def enqueue(self, record: Doc, prompt: list[dict[str, Any]] | None = None, live: Doc | None = None) -> bool:
        """Queue an accepted syscall (its live record); ``False`` if it is already in the book.

        ``prompt`` replaces the call's messages when it is leased (a session's
        history put in front); it is fixed here so every time slice resumes it.
        ``live`` is the whole live record as stored, kept in memory if it fits.
        """
        hint = hint_of(record)
        entry = _entry(record, hint)
        if entry["kind"] == "llm":  # outside the lock: naming a long prompt's prefix blocks takes ~10 µs
            args = record.get("args") or {}
            entry["shape"] = shape_of(
                prompt if prompt is not None else args.get("messages") or [], args.get("max_tokens")
            )
        fields: Doc = {
            "state": QUEUED,
            "queued_at": entry["queued_at"],
            "attempts": 0,
            "slices": 0,
            "usage": Usage().model_dump(),
            "run_ms": 0.0,
            "hint": hint,
        }
        if prompt is not None:
            fields["prompt"] = prompt
        hot = {**live, **fields} if live is not None else None
        size = len(json.dumps(hot, default=str)) if hot is not None else 0
        with self._lock:
            if entry["_id"] in self._entries:
                return False
            self._entries[entry["_id"]] = entry
            self._push(entry)
            self._record(entry["_id"], {"$set": fields})
            if hot is not None and self._hot_bytes + size <= HOT_BYTES and entry["_id"] not in self._hot:
                self._hot[entry["_id"]] = (hot, size)
                self._hot_bytes += size
        return True

    def take(self, limit: int) -> list[Doc]:
        """Up to ``limit`` queued entries in order, removed from the queue: :meth:`grant` or :meth:`put_back` each."""
        taken: list[Doc] = []
        with self._lock:
            while self._heap.items and len(taken) < limit:
                order, _, key, version = heapq.heappop(self._heap.items)
                entry = self._entries.get(key)
                if entry is not None and entry["state"] == QUEUED and entry["version"] == version:
                    taken.append(entry)
                    self._taken[key] = order
        return taken

    def put_back(self, entries: list[Doc]) -> None:
        """Return taken entries that were not leased this round (same place in the order)."""
        with self._lock:
            for entry in entries:
                if entry["state"] == QUEUED:
                    self._push(entry, bump=False, order=self._taken.pop(entry["_id"], None))

    def grant(self, entry: Doc, worker: str, ttl: float, durable: bool = False) -> Doc | None:
        """Lease a taken entry to ``worker``; the entry, or ``None`` if it moved on meanwhile."""
        now = utcnow()
        lease = {
            "id": uuid.uuid4().hex,
            "worker": worker,
            "granted_at": now,
            "expires_at": now + timedelta(seconds=ttl),
        }
        with self._lock:
            if self._entries.get(entry["_id"]) is not entry or entry["state"] != QUEUED:
                return None
            self._taken.pop(entry["_id"], None)
            entry.update(state=LEASED, lease=lease, attempts=entry["attempts"] + 1)
            self._record(entry["_id"], {"$set": {"state": LEASED, "lease": lease}, "$inc": {"attempts": 1}})
        if durable:
            self.flush()
        return entry

    def extend(self, worker: str, lease_ids: list[str], ttl: float) -> int:
        """Push back the expiry of the leases ``worker`` says it holds (not written: a restart grants afresh)."""
        wanted, expires, count = set(lease_ids), utcnow() + timedelta(seconds=ttl), 0
        with self._lock:
            for entry in self._entries.values():
                lease = entry.get("lease")
                if entry["state"] == LEASED and lease and lease["worker"] == worker and lease["id"] in wanted:
                    lease["expires_at"] = expires
                    count += 1
        return count

    def expired(self) -> list[Doc]:
        """Leased entries whose lease ran out."""
        now = utcnow()
        with self._lock:
            return [e for e in self._entries.values() if e["state"] == LEASED and e["lease"]["expires_at"] < now]

    def held_by(self, worker: str) -> list[Doc]:
        """Entries currently leased to ``worker``."""
        with self._lock:
            return [e for e in self._entries.values() if e["state"] == LEASED and e["lease"]["worker"] == worker]

    def llm_calls_held(self) -> Counter[str]:
        """LLM calls on workers, per agent (for ``max_concurrent_llm``)."""
        with self._lock:
            return Counter(e["agent"] for e in self._entries.values() if e["state"] == LEASED and e["kind"] == "llm")

    def requeue(
        self,
        key: str,
        lease_id: str,
        *,
        snapshot: Snapshot | None = None,
        usage: Usage | None = None,
        run_ms: float = 0.0,
        refund_attempt: bool = False,
    ) -> Doc | None:
        """Put a leased call back in the queue (at the back); ``None`` if the lease is not current."""
        now = utcnow()
        update: dict[str, Any] = {"$set": {"state": QUEUED, "queued_at": now}, "$unset": {"lease": ""}, "$inc": {}}
        with self._lock:
            entry = self._current(key, lease_id)
            if entry is None:
                return None
            update["$inc"].update(_add_usage(entry, usage, run_ms))
            self._charged(entry, usage)
            if snapshot is not None:
                update["$set"]["snapshot"] = snapshot.model_dump()
                update["$inc"]["slices"] = 1
                entry["slices"] += 1
                if key in self._hot:  # the next lease resumes from it
                    self._hot[key][0]["snapshot"] = update["$set"]["snapshot"]
            if refund_attempt:
                update["$inc"]["attempts"] = -1
                entry["attempts"] -= 1
            entry.update(state=QUEUED, lease=None, queued_at=now)
            self._push(entry)
            self._record(key, update)
        return entry

    def settle(self, key: str, lease_id: str, usage: Usage | None = None, run_ms: float = 0.0) -> Doc | None:
        """Take the call out of the book for the outcome of ``lease_id``; ``None`` if that lease is stale."""
        with self._lock:
            entry = self._current(key, lease_id)
            if entry is None:
                return None
            _add_usage(entry, usage, run_ms)
            self._charged(entry, usage)
            entry["slices"] += 1
            return self._drop(entry)

    def give_up(self, key: str, lease_id: str | None) -> Doc | None:
        """Take a call out of the book to fail it; ``None`` if it moved on (or its lease is stale)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if lease_id is None and entry["state"] != QUEUED:
                return None
            if lease_id is not None and self._current(key, lease_id) is None:
                return None
            return self._drop(entry)

    def read(self, keys: list[str], ended: bool = False) -> dict[str, Doc]:
        """The live records of ``keys`` (arguments, prompt, snapshot): from memory, the rest in one read.

        Records are read from the database only after the pending transitions
        are written, so a dispatch round whose records are all in memory
        leases without waiting for a write.

        ``ended``: the calls are over (their reply is being made), so their
        records leave memory.
        """
        with self._lock:
            found = {k: self._hot[k][0] for k in keys if k in self._hot}
            if ended:
                for k in found:
                    self._hot_bytes -= self._hot.pop(k)[1]
        missing = [k for k in keys if k not in found]
        if missing:
            self.flush()  # a record read from the database must first say what the book says (a session's prompt)
            found.update({d["_id"]: d for d in self._live.find({"_id": {"$in": missing}})})
        return found

    def hot_bytes(self) -> int:
        """Bytes of live records held in memory."""
        with self._lock:
            return self._hot_bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def count(self, state: str) -> int:
        """Entries in ``state`` (``queued`` or ``leased``); for metrics, read when scraped."""
        with self._lock:
            return sum(1 for e in self._entries.values() if e["state"] == state)

    # -- under the lock ----------------------------------------------------------------

    def _current(self, key: str, lease_id: str) -> Doc | None:
        entry = self._entries.get(key)
        lease = entry.get("lease") if entry else None
        return entry if entry is not None and entry["state"] == LEASED and lease and lease["id"] == lease_id else None

    def _drop(self, entry: Doc) -> Doc:
        # Not written: the reply the caller commits next is the record of this call's end (and its
        # live record is then retired); a crash before that leaves it accepted, queued or leased, to
        # be run again. So its transitions not written yet need not be: a call leased and answered
        # between two flushes costs no update of its live record. Except a session's prompt: a run
        # after a crash must not rebuild it from a session this call's answer may already extend.
        entry["state"] = SETTLING
        del self._entries[entry["_id"]]
        self._taken.pop(entry["_id"], None)
        if "prompt" not in self._pending.get(entry["_id"], {}).get("$set", {}):
            self._pending.pop(entry["_id"], None)
        return entry

    def _charged(self, entry: Doc, usage: Usage | None) -> None:
        if usage is not None and self._charge is not None:
            self._charge(entry, usage)

    def _push(self, entry: Doc, bump: bool = True, order: tuple[Any, ...] | None = None) -> None:
        if bump:
            entry["version"] += 1
        if order is None:
            order = self._heap.key(entry)
        heapq.heappush(self._heap.items, (order, next(self._heap.seq), entry["_id"], entry["version"]))


def _add_usage(entry: Doc, usage: Usage | None, run_ms: float) -> Doc:
    """Add a slice's usage to ``entry``; return the same as ``$inc`` fields of its live record."""
    inc: Doc = {"run_ms": run_ms}
    entry["run_ms"] = float(entry.get("run_ms") or 0.0) + run_ms
    if usage is not None:
        totals = dict(entry.get("usage") or {})
        for name, value in usage.model_dump().items():
            inc[f"usage.{name}"] = value
            totals[name] = int(totals.get(name) or 0) + value
        entry["usage"] = totals
    return inc


def hint_of(record: Doc) -> Doc:
    """The arguments routing and retries look at: the model of an LLM call, the tool of a tool call."""
    args = record.get("args") or {}
    return {"model": args.get("model")} if served_by(record["syscall"]) == "llm" else {"name": args.get("name")}


def _entry(record: Doc, hint: Doc) -> Doc:
    """What the book keeps of a call: the fields ordering, routing, caps and retries read."""
    return {
        "_id": record["_id"],
        "id": record.get("id"),
        "agent": record["agent"],
        "syscall": record["syscall"],
        "kind": served_by(record["syscall"]),
        "priority": int(record.get("priority") or 0),
        "deadline": record.get("deadline"),
        "queued_at": record.get("queued_at") or utcnow(),
        "args": hint,
        "session": record.get("session"),
        "program": record.get("program"),
        "background": bool(record.get("background")),
        "shape": None,  # an LLM call's prompt prefix and size (:mod:`.prefixes`), set when it is queued
        "affinity": affinity_key(record),
        "state": QUEUED,
        "lease": None,
        "attempts": 0,
        "slices": 0,
        "usage": None,  # token counts once a slice or outcome reports some
        "run_ms": 0.0,
        "version": 0,
    }


def _add(merged: Doc, name: str, value: Any) -> None:
    """Add ``value`` to ``name`` in a merged update without touching a path twice (servers refuse that)."""
    top, _, sub = name.partition(".")
    if name in merged["$set"]:
        merged["$set"][name] += value
    elif sub and isinstance(merged["$set"].get(top), dict):
        inner = dict(merged["$set"][top])
        inner[sub] = inner.get(sub, 0) + value
        merged["$set"][top] = inner
    else:
        merged["$inc"][name] = merged["$inc"].get(name, 0) + value
