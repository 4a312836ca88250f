"""Synchronous aiosd client.

>>> with Client("amqp://agent:secret@localhost/") as client:
...     ref = client.memory.add("the meeting moved to 3pm", tags=["calendar"])
...     client.memory.search("when is the meeting")

The client is safe to share between threads: calls from several threads are
in flight at once (their publishes are pipelined) and each waits for its own
reply. A lost connection is re-established and the calls waiting on it still
complete; see :mod:`aiosd.sdk.transport`.
"""

from __future__ import annotations

import time
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime
from types import TracebackType
from typing import Any, Unpack

from .calls import (
    Call,
    CallOptions,
    R,
    build_request,
    memory_add,
    memory_delete,
    memory_get,
    memory_search,
    memory_update,
    reply_wait,
    syscall_result,
    tool_call,
    tool_list,
    unwrap,
)
from .errors import CallTimeout, ConnectionFailed
from .protocol import Reply, Request
from .syscalls import Note, NoteRef, SearchResult
from .tools import ToolCallResult, ToolListResult
from .transport import ConnectionStats, Transport

DEFAULT_TIMEOUT = 60.0


class Client:
    """Connects as one agent and makes syscalls over AMQP."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = 10.0,
        heartbeat: int | None = None,
    ) -> None:
        """Connect to the broker at ``url`` (raises :class:`ConnectionFailed` if it cannot).

        ``heartbeat`` is the AMQP heartbeat in seconds (default: the URL's
        ``?heartbeat=``, else 30; 0 turns heartbeats off). Lost connections are
        re-established in the background; see the README, "Connections".
        """
        self.timeout = timeout
        self._transport = Transport(url, connect_timeout=connect_timeout, heartbeat=heartbeat)
        self.memory = MemorySyscalls(self)
        self.tools = ToolSyscalls(self)
        self._transport.start()

    @property
    def agent(self) -> str:
        """The agent name: the broker user this client authenticates as."""
        return self._transport.agent

    @property
    def connection_stats(self) -> ConnectionStats:
        """How often the connection was lost and re-established, and what that recovered."""
        return self._transport.stats

    def close(self) -> None:
        """Close the connections; calls still waiting fail with ConnectionFailed."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def request(self, syscall: str, args: dict[str, Any] | None = None, **options: Unpack[CallOptions]) -> Reply:
        """Send a syscall and return its full :class:`Reply`, whatever the status."""
        req = build_request(syscall, args, options)
        return self._send(req, options.get("priority", 0), options.get("timeout"), options.get("message_id"))

    def call(self, syscall: str, args: dict[str, Any] | None = None, **options: Unpack[CallOptions]) -> Any:
        """Send a syscall and return its result; raise :class:`CallError` unless ok."""
        return unwrap(self.request(syscall, args, **options))

    def submit(
        self,
        syscall: str,
        args: dict[str, Any] | None = None,
        *,
        priority: int = 0,
        message_id: str | None = None,
        program: str | None = None,
    ) -> str:
        """Publish a syscall without waiting; fetch its outcome later with :meth:`result`."""
        req = Request(syscall=syscall, args=args or {}, program=program)
        call = self._transport.publish(req, message_id=message_id, priority=priority, want_reply=False)
        try:
            call.confirmed.result(timeout=self.timeout)  # returns once the broker holds it
        except FutureTimeout:
            self._transport.forget(call.call_id)
            raise ConnectionFailed(f"the broker did not confirm {call.call_id} within {self.timeout:g}s") from None
        return call.call_id

    def result(self, call_id: str, *, wait: float = 0.0, poll: float = 0.2) -> Reply | None:
        """Fetch the stored reply of one of this agent's syscalls by id.

        Returns ``None`` while the syscall has not finished; with ``wait`` > 0,
        polls until it finishes or ``wait`` seconds pass.
        """
        deadline = time.monotonic() + wait
        while True:
            stored = self.run(syscall_result(call_id))
            if stored.reply is not None:
                return Reply.model_validate(stored.reply)
            if time.monotonic() >= deadline:
                return None
            time.sleep(poll)

    def run(self, call: Call[R], *, priority: int = 0, timeout: float | None = None) -> R:
        """Send a typed :class:`Call` and return its parsed result."""
        return call.parse(self._send(call.request(), priority, timeout, None))

    def _send(self, req: Request, priority: int, timeout: float | None, message_id: str | None) -> Reply:
        limit = self.timeout if timeout is None else timeout
        call = self._transport.publish(req, message_id=message_id, priority=priority)
        try:
            return call.reply.result(timeout=limit)
        except FutureTimeout:
            self._transport.forget(call.call_id)
            raise CallTimeout(call.call_id, limit) from None


class ToolSyscalls:
    """``tool.*`` syscalls of a :class:`Client`."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def call(self, name: str, args: dict[str, Any] | None = None, timeout: float | None = None) -> ToolCallResult:
        """Run tool ``name`` (at most ``timeout`` seconds; default: the tool's own); return its result."""
        return self._client.run(tool_call(name, args, timeout), timeout=reply_wait(self._client.timeout, timeout))

    def list(self) -> ToolListResult:
        """The tools this agent may call, with their argument schemas."""
        return self._client.run(tool_list())


class MemorySyscalls:
    """``memory.*`` syscalls of a :class:`Client`."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def add(self, content: str, tags: list[str] | None = None, metadata: dict[str, Any] | None = None) -> NoteRef:
        """Store a note; return its id."""
        return self._client.run(memory_add(content, tags, metadata))

    def get(self, note_id: str) -> Note:
        """Fetch a note."""
        return self._client.run(memory_get(note_id))

    def update(
        self,
        note_id: str,
        content: str | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Note:
        """Change a note; return it as stored."""
        return self._client.run(memory_update(note_id, content, tags, metadata))

    def delete(self, note_id: str) -> NoteRef:
        """Delete a note."""
        return self._client.run(memory_delete(note_id))

    def search(
        self,
        query: str,
        tags: list[str] | None = None,
        limit: int = 10,
        owner: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> SearchResult:
        """Rank this agent's notes (or ``owner``'s, if shared with it) against ``query``, best first."""
        return self._client.run(memory_search(query, tags, limit, owner, created_after, created_before))
