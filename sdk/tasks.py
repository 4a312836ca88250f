"""Arguments and results of the ``task.*`` and ``batch.*`` syscalls: agent programs run as tasks.

A *task* runs one registered agent program on one JSON input for one agent; a
*batch* is many tasks submitted together. Tasks wait in the durable queue
:data:`TASK_QUEUE`; an ``aiosd runner`` takes them, starts them with
``task.start`` (which grants it a lease), makes the program's syscalls on the
agent's behalf (each request names the task and the lease in
:attr:`~aiosd.sdk.protocol.Request.task`), renews its leases with
``task.heartbeat`` and ends the task with ``task.finish``.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: The durable priority queue of task messages that runners consume.
TASK_QUEUE = "aiosd.tasks"
#: Largest program name, task id and lease token.
MAX_NAME = 128
#: Most tasks in one ``batch.submit`` syscall (the CLI streams any number).
MAX_BATCH_TASKS = 1000
#: Entry-point group of agent programs.
PROGRAM_GROUP = "aiosd.programs"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TaskState(str, Enum):
    """Where a task is in its life; the last four are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        """Whether the task can no longer change (except by ``batch retry``)."""
        return self not in (TaskState.QUEUED, TaskState.RUNNING)


class TaskBinding(_Model):
    """Names the task (and the lease on it) a runner makes a syscall for."""

    id: str = Field(min_length=1, max_length=MAX_NAME, description="The task id.")
    lease: str = Field(min_length=1, max_length=MAX_NAME, description="The lease token from task.start.")


def _zoned(value: datetime | None) -> datetime | None:
    if value is not None and value.utcoffset() is None:
        raise ValueError("deadline needs a time zone (RFC 3339, e.g. 2026-01-01T12:00:00Z)")
    return value


class TaskSubmitArgs(_Model):
    """``task.submit``: run ``program`` on ``input`` for the caller."""

    program: str = Field(min_length=1, max_length=MAX_NAME, description="A registered program name.")
    input: Any = Field(default=None, description="The program's JSON input.")
    priority: int = Field(default=0, ge=0, le=9, description="0-9; capped by the agent's max_priority.")
    deadline: datetime | None = Field(default=None, description="After this instant the task expires unstarted.")
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=MAX_NAME, description="The same key submits the same task once."
    )

    _deadline = field_validator("deadline")(_zoned)


class TaskRef(_Model):
    """Names one task."""

    id: str = Field(min_length=1, max_length=MAX_NAME)


class TaskUsage(_Model):
    """What a task consumed, over every attempt (replayed syscalls are counted once)."""

    syscalls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    wall_ms: float = 0.0


class TaskError(_Model):
    """Why a task failed."""

    code: str = Field(max_length=64)
    message: str = Field(max_length=4000)


class TaskInfo(_Model):
    """A task as stored."""

    id: str
    agent: str
    program: str
    state: TaskState
    priority: int = 0
    batch: str | None = None
    input: Any = None
    deadline: datetime | None = None
    attempts: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output: Any = None
    error: TaskError | None = None
    usage: TaskUsage = Field(default_factory=TaskUsage)


class TaskListArgs(_Model):
    """``task.list``: the caller's tasks of one batch, or its tasks submitted one by one."""

    batch: str | None = Field(default=None, max_length=MAX_NAME)
    state: TaskState | None = None
    after: str | None = Field(default=None, max_length=MAX_NAME, description="Continue after this task id.")
    limit: int = Field(default=100, ge=1, le=1000)


class TaskList(_Model):
    """One page of tasks; ``next`` continues it."""

    tasks: list[TaskInfo]
    next: str | None = None


class TaskStartArgs(_Model):
    """``task.start`` (runners only): take the lease on a task whose message the runner holds."""

    id: str = Field(min_length=1, max_length=MAX_NAME)


class TaskStart(_Model):
    """Whether to run the task (with its lease), drop the message, or hold it and ask again."""

    action: Literal["run", "skip", "wait"]
    reason: str = ""
    lease: str | None = None
    attempt: int = 0
    agent: str | None = None
    program: str | None = None
    input: Any = None
    priority: int = 0
    deadline: datetime | None = None
    retry_after: float = 0.0


class TaskHeartbeatArgs(_Model):
    """``task.heartbeat`` (runners only): renew the leases of the tasks the runner is running.

    Runners send it on a clock even when they hold no task: it is also how the
    scheduler knows which runners are alive (``aiosd status``).
    """

    leases: list[TaskBinding] = Field(max_length=1024)
    runner_id: str | None = Field(default=None, max_length=MAX_NAME, description="<host>-<pid> of the runner.")
    capacity: int = Field(default=0, ge=0, le=100_000, description="Tasks it runs at once.")
    programs: list[str] = Field(default_factory=list, max_length=256, description="Programs installed there.")


class TaskHeartbeat(_Model):
    """Tasks whose lease is gone (cancelled, expired, taken over): stop running them."""

    lost: list[str] = Field(default_factory=list)
    lease_seconds: float = 0.0


class TaskFinishArgs(_Model):
    """``task.finish`` (runners only): the program returned ``output`` or failed with ``error``."""

    id: str = Field(min_length=1, max_length=MAX_NAME)
    lease: str = Field(min_length=1, max_length=MAX_NAME)
    output: Any = None
    error: TaskError | None = None
    usage: TaskUsage = Field(default_factory=TaskUsage)


class TaskFinished(_Model):
    """The task's final state (the first finish wins; a late one gets the stored state)."""

    id: str
    state: TaskState


class BatchTask(_Model):
    """One task of a batch."""

    input: Any = None
    priority: int | None = Field(default=None, ge=0, le=9, description="Defaults to the batch's priority.")


class BatchSubmitArgs(_Model):
    """``batch.submit``: up to :data:`MAX_BATCH_TASKS` tasks of one program in one call."""

    program: str = Field(min_length=1, max_length=MAX_NAME)
    tasks: list[BatchTask] = Field(min_length=1, max_length=MAX_BATCH_TASKS)
    name: str | None = Field(default=None, max_length=MAX_NAME)
    priority: int = Field(default=0, ge=0, le=9)
    deadline: datetime | None = None
    max_concurrent: int | None = Field(default=None, ge=1, le=100_000)

    _deadline = field_validator("deadline")(_zoned)


class BatchRef(_Model):
    """Names one batch."""

    id: str = Field(min_length=1, max_length=MAX_NAME)


class BatchCounts(_Model):
    """Tasks of a batch by state."""

    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0


class BatchInfo(_Model):
    """A batch and how far it has come."""

    id: str
    name: str | None = None
    agent: str
    program: str
    state: Literal["submitting", "running", "finished", "cancelled"]
    total: int
    counts: BatchCounts
    priority: int = 0
    max_concurrent: int | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    usage: TaskUsage = Field(default_factory=TaskUsage)


def task_message_id(task: str, seq: int) -> str:
    """The message id of a task's ``seq``-th syscall: the same on every attempt (replay)."""
    return f"{task}.{seq}"
