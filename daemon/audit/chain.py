"""Audit log: one append-only, hash-chained record for every decision.

Record ``n`` has ``_id = n`` (its sequence number), ``prev`` = the hash of
record ``n - 1`` and ``hash`` = SHA-256 (or HMAC-SHA-256 with ``audit_key``)
over its canonical JSON. A modified, deleted or inserted record therefore
breaks the chain at a place ``aiosd audit verify`` can name.

Appending is insert-only, so it stays cheap on servers that scan a collection
for every update. The unique ``_id`` makes concurrent writers safe: two
writers racing for the same sequence number cannot both insert it; the loser
reads the winner's record and retries after it. Inside one process a lock
and a cached tail avoid that race entirely; across processes (a second
scheduler, the CLI recording an approval) the retry loop resolves it. A tiny
``audit_head`` document remembers the tail so a new process finds it by
``_id`` instead of scanning; it is a hint, advanced monotonically (one write
covers every record appended before it, so under load most appends skip
it), and may lag behind the records after a crash (the retry loop then
walks forward).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from aiosd.daemon.errors import AuditError
from aiosd.daemon.store import Doc
from aiosd.sdk.protocol import utcnow

GENESIS = "0" * 64
HEAD_ID = "head"
#: Fields covered by a record's hash, in the canonical form.
HASHED_FIELDS = (
    "seq",
    "prev",
    "ts",
    "agent",
    "syscall",
    "resource",
    "decision",
    "code",
    "reason",
    "message_id",
    "actor",
)


class Decision(str, Enum):
    """What happened to a syscall (or an agent, for administrative records)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DENIED = "denied"
    COMPLETED = "completed"
    FAILED = "failed"
    PENDING = "pending_approval"
    APPROVED = "approved"
    APPROVAL_DENIED = "approval_denied"
    ADMIN = "admin"


def head_collection(audit: Collection[Doc]) -> Collection[Doc]:
    """The one-document collection holding the chain's tail hint."""
    return audit.database[f"{audit.name}_head"]


def canonical_ts(ts: datetime) -> str:
    """A timestamp as hashed: UTC, millisecond precision (what MongoDB stores)."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds")


def record_hash(record: Doc, key: bytes | None) -> str:
    """The hash of ``record`` over :data:`HASHED_FIELDS`."""
    fields = {f: record.get(f) for f in HASHED_FIELDS}
    fields["ts"] = canonical_ts(record["ts"])
    payload = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if key is not None:
        return hmac.new(key, payload, hashlib.sha256).hexdigest()
    return hashlib.sha256(payload).hexdigest()


@dataclass(frozen=True)
class Entry:
    """What one audit record says (the log adds time, sequence, chain and actor)."""

    agent: str | None
    syscall: str | None
    message_id: str | None
    decision: Decision
    code: str | None = None
    reason: str | None = None
    resource: str | None = None
    actor: str | None = None


@dataclass
class _Slot:
    """One caller's entries waiting for a group write."""

    bodies: list[Doc]
    docs: list[Doc] = field(default_factory=list)
    error: Exception | None = None
    done: bool = False


def _unchained(doc: Doc) -> Doc:
    return {k: v for k, v in doc.items() if k not in ("_id", "seq", "prev", "alg", "hash")}


class AuditLog:
    """Appends hash-chained audit records; never updates or deletes them."""

    def __init__(
        self, collection: Collection[Doc], key: bytes | None = None, actor: str = "scheduler", lazy_head: bool = False
    ) -> None:
        """``lazy_head``: the owner calls :meth:`advance_head` periodically instead of after each append."""
        self._col = collection
        self._head = head_collection(collection)
        self._key = key
        self._actor = actor
        self._lock = threading.Lock()
        self._tail: tuple[int, str] | None = None
        self._head_lock = threading.Lock()
        self._head_written = 0
        self._lazy_head = lazy_head
        self._turn = threading.Condition()
        self._queued: list[_Slot] = []
        self._writing = False

    def record(
        self,
        *,
        agent: str | None,
        syscall: str | None,
        message_id: str | None,
        decision: Decision,
        code: str | None = None,
        reason: str | None = None,
        resource: str | None = None,
        actor: str | None = None,
    ) -> Doc:
        """Append one record and return it (with its ``seq`` and ``hash``)."""
        entry = Entry(agent, syscall, message_id, decision, code, reason, resource, actor)
        return self.record_many([entry])[0]

    def length(self) -> int:
        """Records in the chain (the last sequence number): from memory once this process appended."""
        tail = self._tail
        return tail[0] if tail is not None else self._read_head()[0]

    def record_many(self, entries: list[Entry]) -> list[Doc]:
        """Append ``entries`` in order and return the records once they are stored.

        Group commit: while one thread writes, others queue their entries; the
        next writer takes everything queued and appends it with one write, so
        concurrent batches share round trips instead of waiting in line.
        """
        if not entries:
            return []
        slot = _Slot([self._body(e) for e in entries])
        with self._turn:
            self._queued.append(slot)
            while not slot.done and self._writing:
                self._turn.wait()
            if not slot.done:
                self._writing = True
                group, self._queued = self._queued, []
        if not slot.done:
            self._write(group)
        if slot.error is not None:
            raise slot.error
        if not self._lazy_head:
            self.advance_head()
        return slot.docs

    def _write(self, group: list[_Slot]) -> None:
        """Leader: append the group's records with one write, then hand the turn on."""
        try:
            with self._lock:
                docs = self._append_many([body for s in group for body in s.bodies])
            for s in group:
                s.docs, docs = docs[: len(s.bodies)], docs[len(s.bodies) :]
        except Exception as exc:  # every waiter of the group sees the failure (nothing was acked)
            for s in group:
                s.error = exc
        finally:
            with self._turn:
                for s in group:
                    s.done = True
                self._writing = False
                self._turn.notify_all()

    def _body(self, e: Entry) -> Doc:
        now = utcnow()
        return {
            # MongoDB keeps milliseconds; hash what will be read back.
            "ts": now.replace(microsecond=now.microsecond // 1000 * 1000),
            "agent": e.agent,
            "syscall": e.syscall,
            "message_id": e.message_id,
            "decision": e.decision.value,
            "code": e.code,
            "reason": e.reason,
            "resource": e.resource,
            "actor": e.actor or self._actor,
        }

    def _append_many(self, bodies: list[Doc]) -> list[Doc]:
        """The chain is computed here, in memory; one ordered insert writes it."""
        seq, prev = self._tail or self._read_head()
        docs = []
        for body in bodies:
            seq += 1
            doc = self._chained(body, seq, prev)
            prev = doc["hash"]
            docs.append(doc)
        try:
            self._col.insert_many(docs, ordered=True)
        except BulkWriteError as exc:
            # Another writer (an operator command) took a sequence number: keep what was
            # written, then chain the rest after the other writer's record, one by one.
            written = int(exc.details.get("nInserted", 0))
            if written:
                self._tail = (int(docs[written - 1]["seq"]), str(docs[written - 1]["hash"]))
            else:
                self._tail = None
            return docs[:written] + [self._append(_unchained(d)) for d in docs[written:]]
        self._tail = (seq, prev)
        return docs

    def _chained(self, body: Doc, seq: int, prev: str) -> Doc:
        doc = {**body, "_id": seq, "seq": seq, "prev": prev}
        doc["alg"] = "hmac-sha256" if self._key is not None else "sha256"
        doc["hash"] = record_hash(doc, self._key)
        return doc

    def _append(self, body: Doc) -> Doc:
        seq, prev = self._tail or self._read_head()
        while True:
            doc = self._chained(body, seq + 1, prev)
            try:
                self._col.insert_one(doc)
            except DuplicateKeyError:
                # Another writer took seq + 1: continue the chain after its record.
                seq, prev = self._successor(seq + 1)
                continue
            self._tail = (seq + 1, doc["hash"])
            return doc

    def _successor(self, seq: int) -> tuple[int, str]:
        other = self._col.find_one({"_id": seq}, {"hash": 1})
        if other is None:
            # The insert said it exists, the read says it does not: someone is deleting records.
            raise AuditError(f"audit record {seq} vanished while appending: the log is being tampered with")
        return seq, str(other["hash"])

    def _read_head(self) -> tuple[int, str]:
        head = self._head.find_one({"_id": HEAD_ID})
        if head is None:
            return 0, GENESIS
        return int(head["seq"]), str(head["hash"])

    def advance_head(self) -> None:
        """Record the chain's tail in the head document (a hint; one write covers every record before it)."""
        # One head write covers every record appended before it: under load,
        # threads waiting here find their record already covered and skip.
        with self._head_lock:
            with self._lock:
                seq, digest = self._tail or (0, GENESIS)
            if seq <= self._head_written:
                return
            try:
                # Monotonic: another process that got further must not be moved back.
                self._head.update_one(
                    {"_id": HEAD_ID, "seq": {"$lt": seq}}, {"$set": {"seq": seq, "hash": digest}}, upsert=True
                )
            except DuplicateKeyError:
                pass  # the head is already past seq (the upsert collided with the existing head)
            self._head_written = seq


def as_dict(record: Doc) -> dict[str, Any]:
    """A record as plain JSON-friendly data (for the CLI)."""
    out = {k: v for k, v in record.items() if k != "_id"}
    if isinstance(out.get("ts"), datetime):
        out["ts"] = canonical_ts(out["ts"])
    return out
