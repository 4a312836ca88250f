"""Lease state of LLM syscalls, kept on their live records in MongoDB.

An LLM syscall's live record moves ``accepted -> queued -> leased`` and back
to ``queued`` (time slice over, lease expired, handed back) until a worker's
``done`` settles it. Every move is one ``find_one_and_update`` guarded on the
current state and lease id, so an expiry and a late completion can never
both win, and a scheduler restart finds every lease where it was.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from enum import Enum
from typing import Any

from pymongo import ReturnDocument
from pymongo.collection import Collection

from aiosd.daemon.store import Doc
from aiosd.sdk.cluster import Snapshot
from aiosd.sdk.protocol import Usage, utcnow


class LlmState(str, Enum):
    """Where an LLM syscall is."""

    QUEUED = "queued"
    LEASED = "leased"
    SETTLING = "settling"  # a worker's outcome won; the result is being committed


class LeaseBook:
    """Guarded state transitions of LLM syscalls on the live collection."""

    def __init__(self, live: Collection[Doc]) -> None:
        self._live = live
        self._lock = threading.Lock()

    def enqueue(self, key: str, prompt: list[dict[str, Any]] | None = None) -> bool:
        """Queue an accepted syscall for a worker; ``False`` if it was already queued.

        ``prompt`` replaces the call's messages when it is leased (a session's
        history put in front); it is fixed here so every time slice of the
        call resumes the very same prompt.
        """
        fields: Doc = {"state": LlmState.QUEUED.value, "queued_at": utcnow(), "attempts": 0, "slices": 0,
                       "usage": Usage().model_dump(), "run_ms": 0.0}
        if prompt is not None:
            fields["prompt"] = prompt
        doc = self._update({"_id": key, "state": "accepted"}, {"$set": fields})
        return doc is not None

    def queued(self, limit: int, sort: tuple[tuple[str, int], ...]) -> list[Doc]:
        """The first ``limit`` queued syscalls in ``sort`` order."""
        return list(self._live.find({"state": LlmState.QUEUED.value}).sort(list(sort)).limit(limit))

    def grant(self, key: str, worker: str, ttl: float) -> Doc | None:
        """Lease a queued syscall to ``worker``; the updated record, or ``None`` if it moved."""
        now = utcnow()
        lease = {"id": uuid.uuid4().hex, "worker": worker, "granted_at": now, "expires_at": now + timedelta(seconds=ttl)}
        return self._update(
            {"_id": key, "state": LlmState.QUEUED.value},
            {"$set": {"state": LlmState.LEASED.value, "lease": lease}, "$inc": {"attempts": 1}},
        )

    def extend(self, worker: str, lease_ids: list[str], ttl: float) -> int:
        """Push back the expiry of the leases ``worker`` says it holds."""
        if not lease_ids:
            return 0
        with self._lock:  # see _update: a racing write must not be undone by this one
            result = self._live.update_many(
                {"state": LlmState.LEASED.value, "lease.worker": worker, "lease.id": {"$in": lease_ids}},
                {"$set": {"lease.expires_at": utcnow() + timedelta(seconds=ttl)}},
            )
        return int(result.modified_count)

    def expired(self) -> list[Doc]:
        """Leased syscalls whose lease ran out."""
        return list(self._live.find({"state": LlmState.LEASED.value, "lease.expires_at": {"$lt": utcnow()}}))

    def held_by(self, worker: str) -> list[Doc]:
        """Syscalls currently leased to ``worker``."""
        return list(self._live.find({"state": LlmState.LEASED.value, "lease.worker": worker}))

    def leased(self) -> list[Doc]:
        """Every leased syscall (to rebuild worker loads after a restart)."""
        return list(self._live.find({"state": LlmState.LEASED.value}, {"lease": 1}))

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
        """Put a leased syscall back in the queue (at the back); ``None`` if the lease is not current."""
        update: dict[str, Any] = {
            "$set": {"state": LlmState.QUEUED.value, "queued_at": utcnow()},
            "$unset": {"lease": ""},
            "$inc": _usage_inc(usage, run_ms),
        }
        if snapshot is not None:
            update["$set"]["snapshot"] = snapshot.model_dump()
            update["$inc"]["slices"] = 1
        if refund_attempt:
            update["$inc"]["attempts"] = -1
        return self._update({"_id": key, "state": LlmState.LEASED.value, "lease.id": lease_id}, update)

    def settle(self, key: str, lease_id: str, usage: Usage | None = None, run_ms: float = 0.0) -> Doc | None:
        """Claim the syscall for the outcome of ``lease_id``; ``None`` if that lease is stale.

        A redelivered outcome (the scheduler died while settling) finds the
        record already settling under the same lease and settles it again,
        without counting its usage twice.
        """
        doc = self._update(
            {"_id": key, "state": LlmState.LEASED.value, "lease.id": lease_id},
            {"$set": {"state": LlmState.SETTLING.value}, "$inc": {**_usage_inc(usage, run_ms), "slices": 1}},
        )
        if doc is not None:
            return doc
        return self._live.find_one({"_id": key, "state": LlmState.SETTLING.value, "lease.id": lease_id})

    def give_up(self, key: str, lease_id: str | None) -> Doc | None:
        """Claim a syscall to fail it (attempts exhausted); ``None`` if it moved on."""
        query: Doc = {"_id": key}
        if lease_id is None:
            query["state"] = LlmState.QUEUED.value
        else:
            query.update({"state": LlmState.LEASED.value, "lease.id": lease_id})
        return self._update(query, {"$set": {"state": LlmState.SETTLING.value}})

    def _update(self, query: Doc, update: Doc) -> Doc | None:
        # FerretDB applies findAndModify as a read and a separate write, so two
        # racing transitions could both pass the guard there. Serialising them
        # in-process makes them exact for one scheduler on any server; on
        # MongoDB the guard alone is exact across schedulers.
        with self._lock:
            return self._live.find_one_and_update(query, update, return_document=ReturnDocument.AFTER)


def _usage_inc(usage: Usage | None, run_ms: float) -> dict[str, Any]:
    inc: dict[str, Any] = {"run_ms": run_ms}
    if usage is not None:
        for field, value in usage.model_dump().items():
            inc[f"usage.{field}"] = value
    return inc
