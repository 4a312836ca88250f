"""Syscall records: the durable state of every accepted syscall.

A record is created once per ``(agent, message_id)`` — the ``_id`` makes a
duplicate insert fail, which is what makes redelivery idempotent — and moves
``accepted`` -> ``completed`` in one guarded atomic update.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from aiosd.sdk.protocol import Reply, Request, utcnow

from .store import Doc


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
    """Reads and writes the ``syscalls`` collection."""

    def __init__(self, collection: Collection[Doc]) -> None:
        self._col = collection

    def insert(self, env: Envelope) -> tuple[bool, Doc]:
        """Store a newly accepted syscall. Returns ``(created, record)``."""
        req = env.request
        doc: Doc = {
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
            "reply": None,
            "replied": False,
        }
        try:
            self._col.insert_one(doc)
            return True, doc
        except DuplicateKeyError:
            existing = self._col.find_one({"_id": env.key})
            return False, existing or doc

    def complete(self, key: str, reply: Reply) -> Doc | None:
        """Store the reply; returns the record, or ``None`` if it was already completed."""
        return self._col.find_one_and_update(
            {"_id": key, "state": State.ACCEPTED.value},
            {"$set": {"state": State.COMPLETED.value, "reply": _dump(reply), "completed_at": utcnow()}},
            return_document=ReturnDocument.AFTER,
        )

    def mark_replied(self, key: str) -> None:
        """Note that the reply was handed to the broker."""
        self._col.update_one({"_id": key}, {"$set": {"replied": True}})

    def get(self, agent: str, message_id: str) -> Doc | None:
        """The record of ``agent``'s syscall ``message_id``."""
        return self._col.find_one({"_id": record_key(agent, message_id)})

    def find_by_id(self, message_id: str, agent: str | None = None) -> list[Doc]:
        """Records with this message id (several agents may have used it)."""
        query: Doc = {"id": message_id}
        if agent is not None:
            query["agent"] = agent
        return list(self._col.find(query).limit(20))

    def unfinished(self, older_than: float = 0.0) -> Iterator[Doc]:
        """Accepted records not yet completed, oldest first."""
        cutoff = utcnow() - timedelta(seconds=older_than)
        return iter(self._col.find({"state": State.ACCEPTED.value, "accepted_at": {"$lte": cutoff}}).sort("accepted_at", 1))

    def unreplied(self, older_than: float = 0.0) -> Iterator[Doc]:
        """Completed records whose reply may not have reached the broker."""
        cutoff = utcnow() - timedelta(seconds=older_than)
        query: Doc = {"state": State.COMPLETED.value, "replied": False, "completed_at": {"$lte": cutoff}}
        return iter(self._col.find(query).sort("completed_at", 1))

    def count(self, **query: Any) -> int:
        """Count records matching ``query``."""
        return self._col.count_documents(query)


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
