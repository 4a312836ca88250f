"""Audit log: one append-only record for every decision the scheduler makes."""

from __future__ import annotations

from enum import Enum

from pymongo.collection import Collection

from aiosd.sdk.protocol import utcnow

from .store import Doc


class Decision(str, Enum):
    """What happened to a syscall."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DENIED = "denied"
    COMPLETED = "completed"
    FAILED = "failed"


class AuditLog:
    """Appends audit records; never updates or deletes them."""

    def __init__(self, collection: Collection[Doc]) -> None:
        self._col = collection

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
    ) -> None:
        """Append one record."""
        self._col.insert_one(
            {
                "ts": utcnow(),
                "agent": agent,
                "syscall": syscall,
                "message_id": message_id,
                "decision": decision.value,
                "code": code,
                "reason": reason,
                "resource": resource,
            }
        )
