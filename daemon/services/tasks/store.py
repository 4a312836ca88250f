"""Tasks and batches in MongoDB: every query addresses documents by ``_id``.

``tasks`` holds one document per task: its program, input, agent, state,
attempts, the current lease (runner and token) and, once final, its output or
error and usage. A batch's tasks have the ids ``<batch>.<line>`` (line numbers
zero-padded, from 1), so a batch is read page by page by ``_id`` -- never by a
filter the development server would answer with a scan -- and submitting the
same line twice stores it once.

``batches`` holds one document per batch with its counts by state, and
``batch_totals`` how many tasks were submitted to it (and whether the
submission is complete). Every document has one writer, because a
MongoDB-compatible development server (FerretDB's SQLite handler) applies
concurrent updates of one document as read-modify-write and can lose one:
the submitter writes ``batch_totals``; the scheduler alone writes a batch's
counts, under one lock. ``queued`` is not stored but derived (submitted minus
every other count). The counts move after each task's own guarded update; a
crash between the two writes can leave them off by one, so the scheduler
recounts unfinished batches from their tasks at start, before it serves.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from aiosd.daemon.store import DUPLICATE_KEY, Doc
from aiosd.sdk.cluster import RUNNERS_COLLECTION
from aiosd.sdk.protocol import utcnow
from aiosd.sdk.tasks import TaskState

TASKS = "tasks"
BATCHES = "batches"
TOTALS = "batch_totals"
#: Counts a batch document stores (``queued`` is derived from the submitted total).
STORED_COUNTS = ("running", "succeeded", "failed", "cancelled", "expired")
FINAL = ("succeeded", "failed", "cancelled", "expired")
#: Tasks read with one ``$in`` when a batch is paged through.
PAGE = 500
#: Digits of a line number in a batch task's id (ids sort in line order).
LINE_DIGITS = 7


def batch_task_id(batch: str, line: int) -> str:
    """The id of the task on ``line`` (from 1) of ``batch``."""
    return f"{batch}.{line:0{LINE_DIGITS}d}"


class TaskStore:
    """Reads and writes ``tasks`` and ``batches``."""

    def __init__(self, db: Database[Doc]) -> None:
        self.tasks: Collection[Doc] = db[TASKS]
        self.batches: Collection[Doc] = db[BATCHES]
        self.totals: Collection[Doc] = db[TOTALS]
        self.runners: Collection[Doc] = db[RUNNERS_COLLECTION]
        #: Serializes this process's writes of task and batch documents (see the module docstring).
        self.lock = threading.RLock()
        #: Totals of batches whose submission is complete (they never change again).
        self._final_totals: dict[str, int] = {}
        #: What ``task.start`` needs of a batch (state, max_concurrent); only this process changes the state.
        self._settings: dict[str, tuple[str, int | None]] = {}

    # -- tasks -------------------------------------------------------------------

    def insert(self, doc: Doc) -> tuple[Doc, bool]:
        """Store a new task; ``(stored task, True)``, or the existing one and ``False`` for its id."""
        try:
            self.tasks.insert_one(doc)
        except DuplicateKeyError:
            existing = self.get(str(doc["_id"]))
            if existing is None:  # removed between the two writes: store it after all
                return self.insert(doc)
            return existing, False
        return doc, True

    def insert_many(self, docs: list[Doc]) -> int:
        """Store tasks, skipping ids already stored (a resubmitted line); return how many are new."""
        if not docs:
            return 0
        try:
            return len(self.tasks.insert_many(docs, ordered=False).inserted_ids)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            return len(docs) - len(errors)

    def get(self, task_id: str) -> Doc | None:
        """One task by id."""
        return self.tasks.find_one({"_id": task_id})

    def get_many(self, ids: list[str], fields: Doc | None = None) -> list[Doc]:
        """Tasks by id (one read), in the order of ``ids``; missing ones are left out."""
        found = {d["_id"]: d for d in self.tasks.find({"_id": {"$in": ids}}, fields)}
        return [found[i] for i in ids if i in found]

    def transition(self, task_id: str, guard: Doc, update: Doc) -> Doc | None:
        """Apply ``update`` if the task still matches ``guard``; the task after it, or ``None``."""
        return self.tasks.find_one_and_update({"_id": task_id, **guard}, update, return_document=ReturnDocument.AFTER)

    def agent_tasks(self, agent: str, after: str | None, limit: int) -> list[Doc]:
        """An agent's tasks submitted one by one (not in a batch), by id."""
        query: Doc = {"agent": agent, "batch": None}
        if after:
            query["_id"] = {"$gt": after}
        return list(self.tasks.find(query).sort("_id", 1).limit(limit))

    def runner_seen(self, runner_id: str, agent: str, capacity: int, running: int, programs: list[str]) -> None:
        """Record a runner's heartbeat (one small document per runner, written by this scheduler only)."""
        self.runners.update_one(
            {"_id": runner_id},
            {
                "$set": {
                    "agent": agent,
                    "capacity": capacity,
                    "running": running,
                    "programs": programs,
                    "last_seen": utcnow(),
                }
            },
            upsert=True,
        )

    # -- batches -----------------------------------------------------------------

    def create_batch(self, doc: Doc, total: int = 0, submitted: bool = False) -> None:
        """Store a new batch document and its submitted total."""
        self.totals.insert_one({"_id": doc["_id"], "total": total, "submitted": submitted})
        self.batches.insert_one(doc)

    def set_total(self, batch_id: str, total: int, submitted: bool = False) -> None:
        """The submitter's progress: ``total`` tasks stored and queued (``submitted``: all of them)."""
        self.totals.update_one({"_id": batch_id}, {"$set": {"total": total, "submitted": submitted}})

    def batch(self, batch_id: str) -> Doc | None:
        """One batch by id, with ``total``, ``submitted`` and every count (``queued`` derived)."""
        doc = self.batches.find_one({"_id": batch_id})
        return self._with_totals(doc) if doc is not None else None

    def _with_totals(self, doc: Doc) -> Doc:
        totals = self.totals.find_one({"_id": doc["_id"]}) or {}
        total = int(totals.get("total") or 0)
        counts = {state: int((doc.get("counts") or {}).get(state, 0)) for state in STORED_COUNTS}
        counts["queued"] = max(total - sum(counts.values()), 0)
        submitted = bool(totals.get("submitted"))
        state = doc.get("state")
        if state not in ("finished", "cancelled"):
            state = (
                "submitting"
                if not submitted
                else ("finished" if counts["queued"] == counts["running"] == 0 else "running")
            )
        return {**doc, "total": total, "submitted": submitted, "counts": counts, "state": state}

    def batches_in(self, states: list[str]) -> list[Doc]:
        """Batches in any of ``states`` (the collection holds one small document per batch)."""
        return [self._with_totals(d) for d in self.batches.find({"state": {"$in": states}})]

    def recent_batches(self, limit: int) -> list[Doc]:
        """The newest batches first."""
        return [self._with_totals(d) for d in self.batches.find({}).sort("created_at", -1).limit(limit)]

    def count(self, batch_id: str, moves: dict[str, int], usage: Doc | None = None) -> None:
        """Move tasks between a batch's counts (and add their usage); finish the batch when none is left."""
        inc: Doc = {f"counts.{state}": n for state, n in moves.items() if n and state in STORED_COUNTS}
        for key, value in (usage or {}).items():
            inc[f"usage.{key}"] = value
        if not inc:
            return
        with self.lock:
            after = self.batches.find_one_and_update(
                {"_id": batch_id}, {"$inc": inc}, return_document=ReturnDocument.AFTER
            )
            if after is not None and any(moves.get(state, 0) > 0 for state in FINAL):
                self._finish_when_done(after)

    def _finish_when_done(self, doc: Doc) -> None:
        """Mark the batch finished if every submitted task ended (reads the total once it is final)."""
        counts = doc.get("counts") or {}
        if doc.get("state") in ("finished", "cancelled") or counts.get("running"):
            return
        total = self._final_totals.get(doc["_id"])
        if total is None:
            totals = self.totals.find_one({"_id": doc["_id"]}) or {}
            if not totals.get("submitted"):
                return  # still being submitted: more tasks may come
            if len(self._final_totals) > 10_000:
                self._final_totals.clear()
            total = self._final_totals[doc["_id"]] = int(totals.get("total") or 0)
        if sum(int(counts.get(s, 0)) for s in FINAL) >= total:
            self.batches.update_one(
                {"_id": doc["_id"], "state": doc.get("state")}, {"$set": {"state": "finished", "finished_at": utcnow()}}
            )
            self._settings.pop(doc["_id"], None)

    def start_settings(self, batch_id: str) -> tuple[str, int | None] | None:
        """A batch's stored state and ``max_concurrent`` (cached: only this process changes them)."""
        found = self._settings.get(batch_id)
        if found is None:
            doc = self.batches.find_one({"_id": batch_id}, {"state": 1, "max_concurrent": 1})
            if doc is None:
                return None
            if len(self._settings) > 10_000:
                self._settings.clear()
            limit = doc.get("max_concurrent")
            found = self._settings[batch_id] = (str(doc.get("state")), limit if isinstance(limit, int) else None)
        return found

    def batch_states(self) -> dict[str, int]:
        """Batches by stored state (for metrics; one count per state of a small collection)."""
        return {
            s: self.batches.count_documents({"state": s}) for s in ("submitting", "running", "finished", "cancelled")
        }

    def set_state(self, batch_id: str, state: str) -> None:
        """Mark a batch ``cancelled`` (or back to ``running``, for a retry)."""
        with self.lock:
            self.batches.update_one({"_id": batch_id}, {"$set": {"state": state, "finished_at": None}})
            self._settings.pop(batch_id, None)

    def batch_tasks(self, doc: Doc, after: int = 0, fields: Doc | None = None) -> Iterator[list[Doc]]:
        """A batch's tasks page by page, in line order, from line ``after + 1`` (memory stays flat)."""
        total = int(doc.get("total") or 0)
        for first in range(after + 1, total + 1, PAGE):
            ids = [batch_task_id(doc["_id"], line) for line in range(first, min(first + PAGE, total + 1))]
            yield self.get_many(ids, fields)

    def recount(self, doc: Doc) -> dict[str, int]:
        """Count a batch's tasks by state from the tasks themselves, and store the counts."""
        counts = {state: 0 for state in STORED_COUNTS}
        for page in self.batch_tasks(doc, fields={"state": 1}):
            for task in page:
                if task["state"] in counts:
                    counts[task["state"]] += 1
        with self.lock:
            stored = self.batches.find_one_and_update(
                {"_id": doc["_id"]}, {"$set": {"counts": counts}}, return_document=ReturnDocument.AFTER
            )
            if stored is not None:
                self._finish_when_done(stored)
        return counts


def task_doc(
    task_id: str,
    agent: str,
    program: str,
    task_input: Any,
    priority: int,
    deadline: Any = None,
    batch: str | None = None,
    submitted_by: str | None = None,
) -> Doc:
    """A new queued task."""
    return {
        "_id": task_id,
        "agent": agent,
        "program": program,
        "input": task_input,
        "state": TaskState.QUEUED.value,
        "priority": priority,
        "deadline": deadline,
        "batch": batch,
        "attempts": 0,
        "created_at": utcnow(),
        "submitted_by": submitted_by,
    }
