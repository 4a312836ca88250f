"""Syscall records: the durable state of every accepted syscall.

Two collections, split so that every update or delete touches a small one:

* ``syscalls`` holds *live* syscalls only: accepted and not yet answered
  (running, or completed with a reply not yet handed to the broker). Its ``_id`` is
  ``<agent>/<message_id>``, so a duplicate insert fails: that is what makes
  redelivery idempotent. A record leaves it once its reply is out.
* ``results`` is insert-only and read by ``_id``: one document per completed
  syscall with its reply. Inserting it is the commit point of a syscall; a
  second completion hits the unique ``_id`` and loses ("first completion wins").

Some MongoDB-compatible servers (FerretDB's SQLite handler among them) scan a
whole collection for every update or delete, so keeping the updated
collection small keeps the scheduler fast there, and costs nothing on MongoDB.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from aiosd.daemon.store import Doc
from aiosd.sdk.protocol import Reply, Request, utcnow


class State(str, Enum):
    """Where a syscall is in its life."""

    ACCEPTED = "accepted"
    COMPLETED = "completed"


@dataclass(frozen=True)
class Envelope:
    """An accepted request with the AMQP properties the reply needs."""

    agent: str
    message_id: str
    request: Request
    priority: int
    reply_to: str | None
    correlation_id: str
    received_at: datetime

    @property
    def key(self) -> str:
        """The record's ``_id``: message ids are unique per agent, not globally."""
        return record_key(self.agent, self.message_id)


def record_key(agent: str, message_id: str) -> str:
    """The ``_id`` of the record for ``message_id`` sent by ``agent``."""
    return f"{agent}/{message_id}"


class Records:
    """Reads and writes the ``syscalls`` (live) and ``results`` collections."""

    def __init__(self, live: Collection[Doc], results: Collection[Doc]) -> None:
        self._live = live
        self._results = results

    def insert(self, env: Envelope) -> tuple[bool, Doc]:
        """Store a newly accepted syscall.

        Returns ``(True, record)`` when it is new, else ``(False, existing)``
        where ``existing`` is the live record or, for a syscall already
        finished, its result document (which has a ``reply``).
        """
        doc = _record(env)
        try:
            self._live.insert_one(doc)
        except DuplicateKeyError:
            existing = self._live.find_one({"_id": env.key})
            return False, existing or doc
        done = self._results.find_one({"_id": env.key})
        if done is not None:
            # Finished and answered before: this message is a late duplicate.
            self._live.delete_one({"_id": env.key})
            return False, done
        return True, doc

    def complete(self, env: Envelope, reply: Reply) -> bool:
        """Commit the reply; ``False`` if the syscall was already completed."""
        result = {**_record(env), "state": State.COMPLETED.value, "reply": _dump(reply), "completed_at": utcnow()}
        try:
            self._results.insert_one(result)
        except DuplicateKeyError:
            return False
        return True

    def replied(self, key: str) -> None:
        """The reply reached the broker (or none was asked for): retire the live record."""
        self._live.delete_one({"_id": key})

    def result(self, key: str) -> Doc | None:
        """The result document of a completed syscall."""
        return self._results.find_one({"_id": key})

    def get(self, agent: str, message_id: str) -> Doc | None:
        """The result, or else the live record, of ``agent``'s syscall ``message_id``."""
        key = record_key(agent, message_id)
        return self._results.find_one({"_id": key}) or self._live.find_one({"_id": key})

    def find_by_id(self, message_id: str, agent: str | None = None) -> list[Doc]:
        """Records with this message id (several agents may have used it)."""
        if agent is not None:
            doc = self.get(agent, message_id)
            return [doc] if doc else []
        query: Doc = {"id": message_id}
        found = {d["_id"]: d for d in self._live.find(query).limit(20)}
        found.update({d["_id"]: d for d in self._results.find(query).limit(20)})
        return list(found.values())

    def live(self, older_than: float = 0.0) -> Iterator[Doc]:
        """Live records accepted at least ``older_than`` seconds ago, oldest first.

        A live record whose result exists was completed but maybe not answered.
        """
        cutoff = utcnow() - timedelta(seconds=older_than)
        return iter(self._live.find({"accepted_at": {"$lte": cutoff}}).sort("accepted_at", 1))


def _record(env: Envelope) -> Doc:
    req = env.request
    return {
        "_id": env.key,
        "id": env.message_id,
        "agent": env.agent,
        "syscall": req.syscall,
        "args": req.args,
        "session": req.session,
        "program": req.program,
        "deadline": req.deadline,
        "priority": env.priority,
        "reply_to": env.reply_to,
        "correlation_id": env.correlation_id,
        "state": State.ACCEPTED.value,
        "accepted_at": env.received_at,
    }


def _dump(reply: Reply) -> Doc:
    return reply.model_dump(mode="json")


def envelope_from_record(doc: Doc) -> Envelope:
    """Rebuild the envelope of a stored record (used by recovery)."""
    request = Request(
        syscall=doc["syscall"],
        args=doc.get("args") or {},
        session=doc.get("session"),
        program=doc.get("program"),
        deadline=doc.get("deadline"),
    )
    return Envelope(
        agent=doc["agent"],
        message_id=doc["id"],
        request=request,
        priority=int(doc.get("priority") or 0),
        reply_to=doc.get("reply_to"),
        correlation_id=doc.get("correlation_id") or doc["id"],
        received_at=doc["accepted_at"],
    )


def elapsed_ms(since: datetime, until: datetime | None = None) -> float:
    """Milliseconds between two aware datetimes."""
    return ((until or utcnow()) - since).total_seconds() * 1000.0
