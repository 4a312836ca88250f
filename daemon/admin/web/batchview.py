"""One batch as its console page shows it: progress, throughput over time, failures.

The progress figures come from the batch document (cheap, read on every
refresh). Throughput and failures need the batch's tasks, read page by page
by ``_id`` as ``aiosd batch results`` does; that pass is cached per batch and
done again only when tasks finished since, and at most every
:data:`RECOMPUTE_SECONDS` -- a finished batch is read once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiosd.daemon.admin.batches import progress
from aiosd.daemon.admin.web.charts import bar_chart, buckets
from aiosd.daemon.services.tasks.store import TaskStore
from aiosd.daemon.store import Doc
from aiosd.sdk.protocol import utcnow

#: Seconds between two passes over a running batch's tasks.
RECOMPUTE_SECONDS = 5.0
#: Failures listed on the page (the download has all of them).
SHOWN_FAILURES = 50
FIELDS = {"state": 1, "finished_at": 1, "error": 1, "line": 1, "key": 1, "attempts": 1}


@dataclass(frozen=True)
class TaskPass:
    """What one pass over a batch's tasks found."""

    done: int
    at: float
    chart: dict[str, Any] | None
    failures: list[Doc]


class BatchView:
    """Batch pages' data, with the per-batch cache of task passes."""

    def __init__(self, tasks: TaskStore) -> None:
        self._tasks = tasks
        self._passes: dict[str, TaskPass] = {}
        self._lock = threading.Lock()

    def figures(self, batch_id: str) -> Doc | None:
        """The batch's progress figures (as ``aiosd batch status --json``), or ``None``."""
        doc = self._tasks.batch(batch_id)
        return progress(doc) if doc is not None else None

    def tasks_pass(self, batch_id: str) -> TaskPass | None:
        """Throughput chart and failures, from the cache when nothing finished since the last pass."""
        doc = self._tasks.batch(batch_id)
        if doc is None:
            return None
        figures = progress(doc)
        with self._lock:
            cached = self._passes.get(batch_id)
        fresh = cached is not None and (
            cached.done == figures["done"] or time.monotonic() - cached.at < RECOMPUTE_SECONDS
        )
        if cached is not None and fresh:
            return cached
        found = self._read(doc, figures)
        with self._lock:
            self._passes[batch_id] = found
        return found

    def _read(self, doc: Doc, figures: Doc) -> TaskPass:
        finished: list[datetime] = []
        failures: list[Doc] = []
        for page in self._tasks.batch_tasks(doc, fields=FIELDS):
            for task in page:
                if isinstance(task.get("finished_at"), datetime):
                    finished.append(task["finished_at"])
                if task.get("state") == "failed" and len(failures) < SHOWN_FAILURES:
                    failures.append(_failure(task))
        start = figures["created_at"]
        chart = None
        if isinstance(start, datetime):
            end = figures["finished_at"] if isinstance(figures["finished_at"], datetime) else utcnow()
            step, counts = buckets(finished, start, end)
            chart = bar_chart(counts, start, step)
        return TaskPass(figures["done"], time.monotonic(), chart, failures)


def _failure(task: Doc) -> Doc:
    error = task.get("error") or {}
    return {
        "task": task["_id"],
        "line": task.get("line"),
        "key": task.get("key"),
        "attempts": task.get("attempts", 0),
        "code": error.get("code"),
        "message": error.get("message"),
    }
