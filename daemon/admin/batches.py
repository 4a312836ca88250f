"""What ``aiosd batch`` does: submit a JSONL file as a batch, cancel, retry, export results.

The command line works on MongoDB and RabbitMQ directly (like ``aiosd agents``),
with the operator's settings. A batch file is read twice as a stream -- once to
validate every line, once to submit -- so a 100k-line file costs the memory of
one chunk, and nothing is submitted when any line is invalid (unless the
operator asks to skip invalid lines).

Submitting a chunk stores its tasks (ids ``<batch>.<n>``), adds them to the
batch's counts, then publishes their messages with publisher confirms. The
batch stays ``submitting`` (and never counts as finished) until the last
chunk is out.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from aiosd.daemon.access.authorizer import PolicyLookup
from aiosd.daemon.admin.batchfile import Line, read_lines
from aiosd.daemon.errors import AccessError
from aiosd.daemon.services.tasks.service import new_batch
from aiosd.daemon.services.tasks.store import TaskStore, batch_task_id, task_doc
from aiosd.daemon.store import Doc
from aiosd.daemon.transport.broker import declare_task_queue, task_message
from aiosd.sdk.errors import ServiceUnavailable
from aiosd.sdk.protocol import utcnow
from aiosd.sdk.tasks import TASK_QUEUE, TaskState

#: Tasks stored and published together while submitting.
CHUNK = 500
#: Invalid lines listed in an error before "... and N more".
SHOWN_PROBLEMS = 20


class InvalidBatch(AccessError):
    """The batch file has invalid lines (each named by its line number)."""


@dataclass(frozen=True)
class Submission:
    """What was submitted."""

    batch: str
    tasks: int
    skipped: list[Line]


class TaskPublisher:
    """Publishes task messages on its own connection, a chunk per transaction (one round trip each)."""

    def __init__(self, amqp_url: str) -> None:
        try:
            self._conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
            self._ch: BlockingChannel = self._conn.channel()
            declare_task_queue(self._ch)
            self._ch.tx_select()
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise ServiceUnavailable(f"RabbitMQ: cannot publish to {TASK_QUEUE}: {exc!r}") from exc

    def publish(self, task_id: str, priority: int) -> None:
        """Publish one task's message (it is sent for good by the next :meth:`commit`)."""
        body, props = task_message(task_id, priority)
        self._ch.basic_publish("", TASK_QUEUE, body, props)

    def commit(self) -> None:
        """Commit what was published since the last commit: once this returns, RabbitMQ holds it."""
        self._ch.tx_commit()

    def close(self) -> None:
        """Close the connection."""
        if self._conn.is_open:
            self._conn.close()


class BatchAdmin:
    """Batches as an operator sees them.

    Submitting and reading work on MongoDB and RabbitMQ directly; cancelling
    and retrying go through the scheduler (``batch.cancel``/``batch.retry`` as
    its own broker user), the one writer of a batch's counts.
    """

    def __init__(
        self,
        store: TaskStore,
        policies: PolicyLookup,
        publisher: TaskPublisher | None = None,
        call: Callable[[str, dict[str, Any]], Any] | None = None,
    ) -> None:
        self.store = store
        self._policies = policies
        self._publisher = publisher
        self._call = call

    def submit(
        self,
        path: Path,
        program: str,
        agent: str,
        *,
        priority: int = 0,
        deadline: datetime | None = None,
        max_concurrent: int | None = None,
        name: str | None = None,
        skip_invalid: bool = False,
    ) -> Submission:
        """Validate ``path`` then submit its lines as one batch (see the module docstring)."""
        if self._publisher is None:
            raise AccessError("this command cannot submit")
        standing = self._policies.standing(agent)
        if standing is None:
            raise AccessError(f"no agent {agent!r}: add it with `aiosd agents add {agent}`")
        if not standing.policy.allows_program(program):
            raise AccessError(f"the policy of {agent!r} does not allow the program {program!r}")
        priority = min(priority, standing.policy.max_priority)
        problems = [line for line in read_lines(path) if line.task is None]
        if problems and not skip_invalid:
            raise InvalidBatch(describe_problems(path, problems))
        batch_id = "b-" + secrets.token_hex(8)
        self.store.create_batch(
            {**new_batch(batch_id, agent, program, name, priority, max_concurrent), "deadline": deadline}
        )
        total = 0
        for chunk in _chunks((line for line in read_lines(path) if line.task is not None), CHUNK):
            docs = []
            for line in chunk:
                assert line.task is not None
                total += 1
                doc = task_doc(
                    batch_task_id(batch_id, total),
                    agent,
                    program,
                    line.task.input,
                    min(line.task.priority if line.task.priority is not None else priority, priority),
                    deadline,
                    batch=batch_id,
                )
                docs.append({**doc, "line": line.number, "key": line.task.key})
            self.store.insert_many(docs)
            self.store.set_total(batch_id, total)  # counted before a runner can finish one of them
            for doc in docs:
                self._publisher.publish(doc["_id"], int(doc["priority"]))
            self._publisher.commit()
        self.store.set_total(batch_id, total, submitted=True)
        return Submission(batch_id, total, problems)

    def cancel(self, batch_id: str) -> Doc:
        """Cancel a batch (through the scheduler): queued tasks never start, running ones stop."""
        return self._scheduler("batch.cancel", batch_id)

    def retry_failed(self, batch_id: str) -> tuple[int, Doc]:
        """Queue the batch's failed tasks again (through the scheduler); how many, and the batch."""
        failed = int(self._batch(batch_id)["counts"]["failed"])
        return failed, self._scheduler("batch.retry", batch_id)

    def _scheduler(self, syscall: str, batch_id: str) -> Doc:
        self._batch(batch_id)
        if self._call is None:
            raise AccessError(f"this command cannot send {syscall}")
        return dict(self._call(syscall, {"id": batch_id}))

    def results(self, batch_id: str, failed_only: bool = False) -> Iterator[Doc]:
        """The batch's tasks in line order, one page in memory at a time."""
        batch = self._batch(batch_id)
        for page in self.store.batch_tasks(batch):
            for task in page:
                if not failed_only or task["state"] == TaskState.FAILED.value:
                    yield task

    def _batch(self, batch_id: str) -> Doc:
        batch = self.store.batch(batch_id)
        if batch is None:
            raise AccessError(f"no batch {batch_id!r}")
        return batch


def describe_problems(path: Path, problems: list[Line]) -> str:
    """The invalid lines, by line number (the first few, then a count)."""
    shown = [f"  line {p.number}: {p.problem}" for p in problems[:SHOWN_PROBLEMS]]
    more = len(problems) - len(shown)
    tail = [f"  ... and {more} more invalid line(s)"] if more else []
    head = f"{path}: {len(problems)} invalid line(s); nothing was submitted (--skip-invalid submits the rest)"
    return "\n".join([head, *shown, *tail])


RESULT_COLUMNS = [
    "task",
    "line",
    "key",
    "state",
    "attempts",
    "output",
    "error_code",
    "error_message",
    "syscalls",
    "prompt_tokens",
    "completion_tokens",
    "wall_ms",
]


def result_row(task: Doc) -> dict[str, Any]:
    """One exported result (JSONL keeps ``output`` as JSON; CSV gets it as JSON text)."""
    usage = task.get("usage") or {}
    error = task.get("error") or {}
    return {
        "task": task["_id"],
        "line": task.get("line"),
        "key": task.get("key"),
        "state": task.get("state"),
        "attempts": task.get("attempts", 0),
        "output": task.get("output"),
        "error_code": error.get("code"),
        "error_message": error.get("message"),
        "syscalls": usage.get("syscalls", 0),
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "completion_tokens": usage.get("completion_tokens", 0),
        "wall_ms": usage.get("wall_ms", 0.0),
    }


def write_results(rows: Iterator[Doc], fmt: str, write: Callable[[str], Any]) -> int:
    """Stream the results as JSONL or CSV through ``write``; return how many."""
    count = 0
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        write(buffer.getvalue())
    for task in rows:
        row = result_row(task)
        if fmt == "csv":
            buffer = io.StringIO()
            csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS).writerow(
                {**row, "output": json.dumps(row["output"], default=str)}
            )
            write(buffer.getvalue())
        else:
            write(json.dumps(row, default=str) + "\n")
        count += 1
    return count


def _chunks(lines: Iterator[Line], size: int) -> Iterator[list[Line]]:
    chunk: list[Line] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def progress(batch: Doc, now: datetime | None = None) -> dict[str, Any]:
    """A batch's progress figures (``batch`` as :meth:`TaskStore.batch` reads it): counts, done, tokens, rate, ETA."""
    counts = batch.get("counts") or {}
    total = int(batch.get("total") or 0)
    done = sum(int(counts.get(s, 0)) for s in ("succeeded", "failed", "cancelled", "expired"))
    started = batch.get("created_at")
    elapsed = ((now or utcnow()) - started).total_seconds() if isinstance(started, datetime) else 0.0
    if isinstance(batch.get("finished_at"), datetime) and isinstance(started, datetime):
        elapsed = (batch["finished_at"] - started).total_seconds()
    rate = done / elapsed if elapsed > 0 else 0.0
    usage = batch.get("usage") or {}
    return {
        "id": batch["_id"],
        "name": batch.get("name"),
        "agent": batch.get("agent"),
        "program": batch.get("program"),
        "state": batch.get("state"),
        "total": total,
        "done": done,
        "counts": {s.value: int(counts.get(s.value, 0)) for s in TaskState},
        "tokens": int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0)),
        "tasks_per_second": round(rate, 3),
        "eta_seconds": round((total - done) / rate, 1) if rate > 0 and total > done else None,
        "created_at": started,
        "finished_at": batch.get("finished_at"),
    }
