"""Tasks and batches in MongoDB: every query addresses documents by ``_id``.

``tasks`` holds one document per task: its program, input, agent, state,
attempts, the current lease (runner and token) and, once final, its output or
error and usage. A batch's tasks have the ids ``<batch>.<line>`` (line numbers
zero-padded, from 1), so a batch is read page by page by ``_id`` -- never by a
filter the development server would answer with a scan -- and submitting the
same line twice stores it once.

``batches`` holds one document per batch with its counts by state. The counts
move with every transition the scheduler makes (``$inc`` after the task's own
guarded update); a crash between the two writes can leave them off by one,
so the scheduler recounts unfinished batches from their tasks at start,
before it serves anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from aiosd.daemon.store import DUPLICATE_KEY, Doc
from aiosd.sdk.protocol import utcnow
from aiosd.sdk.tasks import TaskState

TASKS = "tasks"
BATCHES = "batches"
#: Tasks read with one ``$in`` when a batch is paged through.
PAGE = 500
#: Digits of a line number in a batch task's id (ids sort in line order).
LINE_DIGITS = 7


def batch_task_id(batch: str, line: int) -> str:
    """The id of the task on ``line`` (from 1) of ``batch``."""
    return f"{batch}.{line:0{LINE_DIGITS}d}"


def empty_counts() -> dict[str, int]:
    """Zero tasks in every state."""
    return {state.value: 0 for state in TaskState}


class TaskStore:
    """Reads and writes ``tasks`` and ``batches``."""

    def __init__(self, db: Database[Doc]) -> None:
        self.tasks: Collection[Doc] = db[TASKS]
        self.batches: Collection[Doc] = db[BATCHES]

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

    # -- batches -----------------------------------------------------------------

    def create_batch(self, doc: Doc) -> None:
        """Store a new batch document."""
        self.batches.insert_one(doc)

    def batch(self, batch_id: str) -> Doc | None:
        """One batch by id."""
        return self.batches.find_one({"_id": batch_id})

    def batches_in(self, states: list[str]) -> list[Doc]:
        """Batches in any of ``states`` (the collection holds one small document per batch)."""
        return list(self.batches.find({"state": {"$in": states}}))

    def recent_batches(self, limit: int) -> list[Doc]:
        """The newest batches first."""
        return list(self.batches.find({}).sort("created_at", -1).limit(limit))

    def count(self, batch_id: str, moves: dict[str, int], usage: Doc | None = None) -> Doc | None:
        """Move tasks between a batch's counts (and add their usage); finish the batch when none is left."""
        inc: Doc = {f"counts.{state}": n for state, n in moves.items() if n}
        for key, value in (usage or {}).items():
            inc[f"usage.{key}"] = value
        if not inc:
            return self.batch(batch_id)
        doc = self.batches.find_one_and_update({"_id": batch_id}, {"$inc": inc}, return_document=ReturnDocument.AFTER)
        if doc is not None:
            self.finish_if_done(doc)
        return doc

    def finish_if_done(self, doc: Doc) -> None:
        """Mark a submitted batch finished once no task is queued or running."""
        counts = doc.get("counts") or {}
        if doc.get("state") == "running" and not counts.get("queued") and not counts.get("running"):
            self.batches.update_one(
                {"_id": doc["_id"], "state": "running"}, {"$set": {"state": "finished", "finished_at": utcnow()}}
            )

    def batch_tasks(self, doc: Doc, after: int = 0, fields: Doc | None = None) -> Iterator[list[Doc]]:
        """A batch's tasks page by page, in line order, from line ``after + 1`` (memory stays flat)."""
        total = int(doc.get("total") or 0)
        for first in range(after + 1, total + 1, PAGE):
            ids = [batch_task_id(doc["_id"], line) for line in range(first, min(first + PAGE, total + 1))]
            yield self.get_many(ids, fields)

    def recount(self, doc: Doc) -> dict[str, int]:
        """Count a batch's tasks by state from the tasks themselves, and store the counts."""
        counts = empty_counts()
        for page in self.batch_tasks(doc, fields={"state": 1}):
            for task in page:
                counts[str(task["state"])] = counts.get(str(task["state"]), 0) + 1
        self.batches.update_one({"_id": doc["_id"]}, {"$set": {"counts": counts}})
        self.finish_if_done({**doc, "counts": counts})
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
