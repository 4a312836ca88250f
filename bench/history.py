"""Preloading a database with completed syscalls, as the scheduler would have left them.

``preload(db, agent, count)`` writes ``count`` completed ``memory.add``
syscalls of ``agent`` straight into an aiosd database with ``insert_many``:
for each one its ``results`` document (shaped like
``aiosd.daemon.pipeline.records``: the record plus ``state``, ``reply`` and
``completed_at``), the memory note it created in ``memory``, and its two audit
records (``accepted``, ``completed``), appended to the hash chain after its
current tail with the chain's own hash function, with the ``audit_head`` hint
moved to the new tail. Run it while no scheduler is using the database.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pymongo.database import Database

from aiosd.daemon.audit.chain import GENESIS, HEAD_ID, head_collection, record_hash
from aiosd.sdk.protocol import utcnow

Doc = dict[str, Any]
WORDS = [
    "queue",
    "lease",
    "worker",
    "memory",
    "note",
    "agent",
    "kernel",
    "broker",
    "reply",
    "audit",
    "batch",
    "session",
    "policy",
    "quota",
    "token",
]


def preload(
    db: Database[Doc],
    agent: str,
    count: int,
    *,
    batch: int = 2000,
    progress: Callable[[int, float], None] | None = None,
) -> float:
    """Insert ``count`` completed syscalls; return the seconds it took."""
    start = time.monotonic()
    seq, prev = _audit_tail(db)
    first = utcnow() - timedelta(seconds=count // 100 + 60)  # history: spread over the recent past
    done = 0
    while done < count:
        n = min(batch, count - done)
        results, notes, audit = [], [], []
        for i in range(done, done + n):
            at = first + timedelta(milliseconds=i * 10)
            result, note = _completed(agent, i, at)
            results.append(result)
            notes.append(note)
            for decision in ("accepted", "completed"):
                seq += 1
                record = _audit(seq, prev, at, agent, result["id"], decision)
                prev = record["hash"]
                audit.append(record)
        db["results"].insert_many(results, ordered=False)
        db["memory"].insert_many(notes, ordered=False)
        db["audit"].insert_many(audit, ordered=True)
        done += n
        if progress is not None:
            progress(done, time.monotonic() - start)
    head_collection(db["audit"]).replace_one({"_id": HEAD_ID}, {"_id": HEAD_ID, "seq": seq, "hash": prev}, upsert=True)
    return time.monotonic() - start


def _audit_tail(db: Database[Doc]) -> tuple[int, str]:
    last = db["audit"].find_one(sort=[("_id", -1)], projection={"hash": 1})
    return (int(last["_id"]), str(last["hash"])) if last else (0, GENESIS)


def _completed(agent: str, i: int, at: datetime) -> tuple[Doc, Doc]:
    message_id = uuid.uuid4().hex
    note_id = "n_" + hashlib.sha256(f"{agent}\0{message_id}".encode()).hexdigest()[:24]
    content = f"history note {i}: " + " ".join(WORDS[(i + k * 7) % len(WORDS)] for k in range(8))
    args = {"content": content, "tags": [], "metadata": {}}
    reply = {
        "v": 1,
        "id": message_id,
        "syscall": "memory.add",
        "status": "ok",
        "result": {"id": note_id},
        "error": None,
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0},
        "timings": {"queue_ms": 0.2, "run_ms": 1.5},
    }
    result = {
        "_id": f"{agent}/{message_id}",
        "id": message_id,
        "agent": agent,
        "syscall": "memory.add",
        "args": args,
        "session": None,
        "program": None,
        "deadline": None,
        "priority": 0,
        "reply_to": f"aiosd.reply.{agent}.history",
        "correlation_id": message_id,
        "state": "completed",
        "accepted_at": at,
        "reply": reply,
        "completed_at": at + timedelta(milliseconds=2),
    }
    note = {
        "_id": note_id,
        "agent": agent,
        "content": content,
        "tags": [],
        "metadata": {},
        "created_at": at,
        "updated_at": at,
        "deleted": False,
    }
    return result, note


def _audit(seq: int, prev: str, at: datetime, agent: str, message_id: str, decision: str) -> Doc:
    ts = at.replace(microsecond=at.microsecond // 1000 * 1000)
    record: Doc = {
        "_id": seq,
        "seq": seq,
        "prev": prev,
        "ts": ts,
        "agent": agent,
        "syscall": "memory.add",
        "message_id": message_id,
        "decision": decision,
        "code": None,
        "reason": None,
        "resource": f"memory:{agent}",
        "actor": "scheduler",
        "alg": "sha256",
    }
    record["hash"] = record_hash(record, None)
    return record
