"""Arguments and results of every syscall, and the catalogue that names them.

Each syscall has a frozen arguments model (validated by the scheduler before
anything runs) and a result model (what ``Reply.result`` holds when the status
is ``ok``). :data:`CATALOGUE` is the single list both sides use.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .context import (
    ContextAppendArgs,
    ContextCreateArgs,
    ContextForkArgs,
    ContextListArgs,
    ContextRef,
    Session,
    SessionInfo,
    SessionList,
)
from .llm import LlmChatArgs, LlmChatResult
from .storage import (
    FileContent,
    FileDeleted,
    FileList,
    FileStat,
    FileWritten,
    ShareList,
    StorageDeleteArgs,
    StorageListArgs,
    StoragePathArgs,
    StorageReadArgs,
    StorageRollbackArgs,
    StorageShareArgs,
    StorageUnshareArgs,
    StorageWriteArgs,
)
from .tasks import (
    BatchInfo,
    BatchRef,
    BatchSubmitArgs,
    TaskFinishArgs,
    TaskFinished,
    TaskHeartbeat,
    TaskHeartbeatArgs,
    TaskInfo,
    TaskList,
    TaskListArgs,
    TaskRef,
    TaskStart,
    TaskStartArgs,
    TaskSubmitArgs,
)
from .tools import ToolCallArgs, ToolCallResult, ToolListArgs, ToolListResult

MAX_NOTE_CHARS = 65_536
MAX_TAGS = 32
Tag = str


class _Args(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True)


# -- memory ------------------------------------------------------------------


class MemoryAddArgs(_Args):
    """``memory.add``: store a note in the caller's memory."""

    content: str = Field(min_length=1, max_length=MAX_NOTE_CHARS)
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    metadata: dict[str, Any] = Field(default_factory=dict)


class MemoryGetArgs(_Args):
    """``memory.get``: fetch one note by id."""

    id: str = Field(min_length=1, max_length=128)


class MemoryUpdateArgs(_Args):
    """``memory.update``: replace the given fields of a note."""

    id: str = Field(min_length=1, max_length=128)
    content: str | None = Field(default=None, min_length=1, max_length=MAX_NOTE_CHARS)
    tags: list[Tag] | None = Field(default=None, max_length=MAX_TAGS)
    metadata: dict[str, Any] | None = None


class MemoryDeleteArgs(_Args):
    """``memory.delete``: remove a note."""

    id: str = Field(min_length=1, max_length=128)


class MemorySearchArgs(_Args):
    """``memory.search``: rank the caller's notes against a query (BM25), with filters."""

    query: str = Field(min_length=1, max_length=4096)
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS, description="Only notes with all these tags.")
    limit: int = Field(default=10, ge=1, le=100)
    created_after: datetime | None = Field(default=None, description="Only notes created at or after this time.")
    created_before: datetime | None = Field(default=None, description="Only notes created before this time.")
    owner: str | None = Field(
        default=None,
        max_length=64,
        description="Search this agent's memory instead (it must be shared with the caller).",
    )


class Note(_Result):
    """One memory note."""

    id: str
    owner: str | None = Field(default=None, description="The agent whose memory holds the note.")
    content: str
    tags: list[Tag]
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class NoteRef(_Result):
    """The id of a note that was added or deleted."""

    id: str


class ScoredNote(Note):
    """A search hit; higher ``score`` is more relevant."""

    score: float


class SearchResult(_Result):
    """``memory.search`` result, best first."""

    results: list[ScoredNote]


# -- kernel ------------------------------------------------------------------


class ResultArgs(_Args):
    """``syscall.result``: fetch the stored reply of one of the caller's syscalls."""

    id: str = Field(min_length=1, max_length=128, description="The syscall's message_id.")


class StoredResult(_Result):
    """``syscall.result`` result. ``reply`` is null while the syscall is still running."""

    id: str
    state: str = Field(description="accepted, completed")
    reply: dict[str, Any] | None = None


#: Who serves a syscall: the scheduler itself (database work), an LLM worker, or a tool runner.
#: Leased kinds wait in the scheduler's queue until a worker of that kind takes them.
ServedBy = Literal["kernel", "llm", "tools"]


@dataclass(frozen=True)
class Syscall:
    """A catalogue entry: name, argument model, result model, one-line summary, who serves it."""

    name: str
    args: type[BaseModel]
    result: type[BaseModel]
    summary: str
    served_by: ServedBy = "kernel"

    @property
    def leased(self) -> bool:
        """Whether a worker or tool runner serves it (under a lease) rather than the scheduler."""
        return self.served_by != "kernel"


CATALOGUE: dict[str, Syscall] = {
    s.name: s
    for s in (
        Syscall("memory.add", MemoryAddArgs, NoteRef, "Store a note in the caller's memory."),
        Syscall("memory.get", MemoryGetArgs, Note, "Fetch one note by id."),
        Syscall("memory.update", MemoryUpdateArgs, Note, "Change a note's content, tags or metadata."),
        Syscall("memory.delete", MemoryDeleteArgs, NoteRef, "Delete a note."),
        Syscall("memory.search", MemorySearchArgs, SearchResult, "Rank notes against a query."),
        Syscall(
            "llm.chat", LlmChatArgs, LlmChatResult, "Generate the next assistant message (served by a worker).", "llm"
        ),
        Syscall("context.create", ContextCreateArgs, SessionInfo, "Start a conversation session."),
        Syscall("context.get", ContextRef, Session, "Fetch a session with its messages."),
        Syscall("context.append", ContextAppendArgs, SessionInfo, "Add messages to a session."),
        Syscall("context.fork", ContextForkArgs, SessionInfo, "Copy a session into an independent one."),
        Syscall("context.delete", ContextRef, SessionInfo, "Delete a session."),
        Syscall("context.list", ContextListArgs, SessionList, "List the caller's sessions."),
        Syscall("storage.write", StorageWriteArgs, FileWritten, "Write a new version of a file."),
        Syscall("storage.read", StorageReadArgs, FileContent, "Read a file's current or a kept version."),
        Syscall("storage.list", StorageListArgs, FileList, "List files under a path prefix."),
        Syscall("storage.stat", StoragePathArgs, FileStat, "Describe a file and its kept versions."),
        Syscall("storage.delete", StorageDeleteArgs, FileDeleted, "Delete a file (soft, or purge for good)."),
        Syscall("storage.rollback", StorageRollbackArgs, FileWritten, "Restore a kept version as a new version."),
        Syscall("storage.share", StorageShareArgs, ShareList, "Let an agent or group read or write a path."),
        Syscall("storage.unshare", StorageUnshareArgs, ShareList, "Withdraw a share."),
        Syscall(
            "tool.call",
            ToolCallArgs,
            ToolCallResult,
            "Run a registered tool in a sandbox (served by aiosd tools).",
            "tools",
        ),
        Syscall("tool.list", ToolListArgs, ToolListResult, "List the tools the caller may call, with their schemas."),
        Syscall("syscall.result", ResultArgs, StoredResult, "Fetch a syscall's stored reply by id."),
        Syscall("task.submit", TaskSubmitArgs, TaskInfo, "Queue a run of a registered agent program."),
        Syscall("task.get", TaskRef, TaskInfo, "Fetch one of the caller's tasks."),
        Syscall("task.cancel", TaskRef, TaskInfo, "Cancel a queued or running task."),
        Syscall("task.list", TaskListArgs, TaskList, "List the caller's tasks, of one batch or submitted alone."),
        Syscall("task.start", TaskStartArgs, TaskStart, "Runners: take the lease on a task."),
        Syscall("task.heartbeat", TaskHeartbeatArgs, TaskHeartbeat, "Runners: renew task leases."),
        Syscall("task.finish", TaskFinishArgs, TaskFinished, "Runners: end a task with its output or error."),
        Syscall("batch.submit", BatchSubmitArgs, BatchInfo, "Queue many tasks of one program together."),
        Syscall("batch.get", BatchRef, BatchInfo, "A batch and its progress."),
        Syscall("batch.cancel", BatchRef, BatchInfo, "Cancel a batch's queued and running tasks."),
        Syscall("batch.retry", BatchRef, BatchInfo, "Queue a batch's failed tasks again."),
    )
}


def served_by(syscall: str) -> ServedBy:
    """Who serves ``syscall`` (the kinds table above is the only place that decides it).

    A name outside the catalogue is never accepted, so it is never served: ``kernel``.
    """
    spec = CATALOGUE.get(syscall)
    return spec.served_by if spec is not None else "kernel"


def is_leased(syscall: str) -> bool:
    """Whether ``syscall`` is leased to a worker or tool runner."""
    return served_by(syscall) != "kernel"
