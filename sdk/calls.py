"""Typed descriptions of syscalls, shared by the sync and asyncio clients.

A :class:`Call` names a syscall, its validated arguments and the model its
result is parsed into; the typed helpers (``client.memory.add(...)``) only build
calls, so both clients share one definition of each helper.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypedDict, TypeVar

from pydantic import BaseModel

from .errors import CallError
from .protocol import Reply, Request, Status
from .syscalls import (
    MemoryAddArgs,
    MemoryDeleteArgs,
    MemoryGetArgs,
    MemorySearchArgs,
    MemoryUpdateArgs,
    Note,
    NoteRef,
    ResultArgs,
    SearchResult,
    StoredResult,
)
from .tasks import TaskBinding
from .tools import ToolCallArgs, ToolCallResult, ToolListArgs, ToolListResult

R = TypeVar("R", bound=BaseModel)


class CallOptions(TypedDict, total=False):
    """Keyword options of ``request``/``call`` on both clients."""

    priority: int  # 0 (default) to 9
    timeout: float | None  # seconds to wait for the reply; None: the client's default
    session: str | None  # conversation session (llm.chat uses and extends it)
    program: str | None  # groups the calls of one agent run
    message_id: str | None  # idempotency key; a new UUID by default
    task: TaskBinding | None  # runners: the task (and lease) the call is made for


def build_request(syscall: str, args: dict[str, Any] | None, options: CallOptions) -> Request:
    """The wire request of ``request``/``call`` on both clients."""
    return Request(
        syscall=syscall,
        args=args or {},
        session=options.get("session"),
        program=options.get("program"),
        task=options.get("task"),
    )


@dataclass(frozen=True)
class Call(Generic[R]):
    """One syscall ready to send, and how to read its result."""

    syscall: str
    args: BaseModel
    result: type[R]

    def request(self, session: str | None = None, program: str | None = None) -> Request:
        """The wire request for this call."""
        args = self.args.model_dump(mode="json", exclude_none=True)
        return Request(syscall=self.syscall, args=args, session=session, program=program)

    def parse(self, reply: Reply) -> R:
        """Return the typed result of ``reply`` or raise :class:`CallError`."""
        return self.result.model_validate(unwrap(reply))


def unwrap(reply: Reply) -> Any:
    """Return ``reply.result`` when the status is ok; raise :class:`CallError` otherwise."""
    if reply.status == Status.OK:
        return reply.result
    code = reply.error.code.value if reply.error else reply.status.value
    message = reply.error.message if reply.error else f"syscall ended with status {reply.status.value}"
    raise CallError(code, message, reply)


def memory_add(content: str, tags: list[str] | None = None, metadata: dict[str, Any] | None = None) -> Call[NoteRef]:
    """Describe ``memory.add``."""
    args = MemoryAddArgs(content=content, tags=tags or [], metadata=metadata or {})
    return Call("memory.add", args, NoteRef)


def memory_get(note_id: str) -> Call[Note]:
    """Describe ``memory.get``."""
    return Call("memory.get", MemoryGetArgs(id=note_id), Note)


def memory_update(
    note_id: str,
    content: str | None = None,
    tags: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Call[Note]:
    """Describe ``memory.update``; fields left ``None`` keep their value."""
    args = MemoryUpdateArgs(id=note_id, content=content, tags=tags, metadata=metadata)
    return Call("memory.update", args, Note)


def memory_delete(note_id: str) -> Call[NoteRef]:
    """Describe ``memory.delete``."""
    return Call("memory.delete", MemoryDeleteArgs(id=note_id), NoteRef)


def memory_search(
    query: str,
    tags: list[str] | None = None,
    limit: int = 10,
    owner: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> Call[SearchResult]:
    """Describe ``memory.search`` (of ``owner``'s shared memory, if given; optionally within a time range)."""
    args = MemorySearchArgs(
        query=query,
        tags=tags or [],
        limit=limit,
        owner=owner,
        created_after=created_after,
        created_before=created_before,
    )
    return Call("memory.search", args, SearchResult)


def tool_call(name: str, args: dict[str, Any] | None = None, timeout: float | None = None) -> Call[ToolCallResult]:
    """Describe ``tool.call``."""
    return Call("tool.call", ToolCallArgs(name=name, args=args or {}, timeout=timeout), ToolCallResult)


def tool_list() -> Call[ToolListResult]:
    """Describe ``tool.list``."""
    return Call("tool.list", ToolListArgs(), ToolListResult)


def reply_wait(default: float, tool_timeout: float | None) -> float | None:
    """How long to wait for a tool call's reply: the client's default, or longer than the tool may run."""
    return None if tool_timeout is None else max(default, tool_timeout + 30.0)


def syscall_result(call_id: str) -> Call[StoredResult]:
    """Describe ``syscall.result``."""
    return Call("syscall.result", ResultArgs(id=call_id), StoredResult)
