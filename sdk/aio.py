"""asyncio aiosd client: the same calls as :class:`~aiosd.sdk.client.Client`, awaitable.

The AMQP work happens on the transport's own I/O thread (heartbeats and
reconnects included); coroutines queue requests and await futures bridged into
the running loop, so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
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
from .client import DEFAULT_TIMEOUT
from .errors import CallTimeout
from .protocol import Reply, Request
from .syscalls import Note, NoteRef, SearchResult
from .tools import ToolCallResult, ToolListResult
from .transport import ConnectionStats, Transport


class AsyncClient:
    """Connects as one agent and makes syscalls from asyncio code.

    Use ``async with AsyncClient(url) as client:`` or ``await AsyncClient.connect(url)``.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = 10.0,
        heartbeat: int | None = None,
    ) -> None:
        """Prepare a client for ``url``; it connects in ``async with`` or :meth:`connect`.

        ``heartbeat`` is the AMQP heartbeat in seconds (default: the URL's
        ``?heartbeat=``, else 30; 0 turns heartbeats off).
        """
        self.timeout = timeout
        self._transport = Transport(url, connect_timeout=connect_timeout, heartbeat=heartbeat)
        self.memory = AsyncMemorySyscalls(self)
        self.tools = AsyncToolSyscalls(self)

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> AsyncClient:
        """Create a client and open its connections."""
        client = cls(url, **kwargs)
        await asyncio.to_thread(client._transport.start)
        return client

    @property
    def agent(self) -> str:
        """The agent name: the broker user this client authenticates as."""
        return self._transport.agent

    @property
    def connection_stats(self) -> ConnectionStats:
        """How often the connection was lost and re-established, and what that recovered."""
        return self._transport.stats

    async def close(self) -> None:
        """Close the connections."""
        await asyncio.to_thread(self._transport.close)

    async def __aenter__(self) -> AsyncClient:
        await asyncio.to_thread(self._transport.start)
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    async def request(self, syscall: str, args: dict[str, Any] | None = None, **options: Unpack[CallOptions]) -> Reply:
        """Send a syscall and return its full :class:`Reply`, whatever the status."""
        req = build_request(syscall, args, options)
        return await self._send(req, options.get("priority", 0), options.get("timeout"), options.get("message_id"))

    async def call(self, syscall: str, args: dict[str, Any] | None = None, **options: Unpack[CallOptions]) -> Any:
        """Send a syscall and return its result; raise :class:`CallError` unless ok."""
        return unwrap(await self.request(syscall, args, **options))

    async def result(self, call_id: str, *, wait: float = 0.0, poll: float = 0.2) -> Reply | None:
        """Fetch the stored reply of one of this agent's syscalls; ``None`` if unfinished."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            stored = await self.run(syscall_result(call_id))
            if stored.reply is not None:
                return Reply.model_validate(stored.reply)
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(poll)

    async def run(self, call: Call[R], *, priority: int = 0, timeout: float | None = None) -> R:
        """Send a typed :class:`Call` and return its parsed result."""
        return call.parse(await self._send(call.request(), priority, timeout, None))

    async def _send(self, req: Request, priority: int, timeout: float | None, message_id: str | None) -> Reply:
        limit = self.timeout if timeout is None else timeout
        # publish only queues the request for the I/O thread: it never blocks the loop.
        call = self._transport.publish(req, message_id=message_id, priority=priority)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(call.reply), limit)
        except TimeoutError:
            self._transport.forget(call.call_id)
            raise CallTimeout(call.call_id, limit) from None


class AsyncToolSyscalls:
    """``tool.*`` syscalls of an :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def call(self, name: str, args: dict[str, Any] | None = None, timeout: float | None = None) -> ToolCallResult:
        """Run tool ``name`` (at most ``timeout`` seconds; default: the tool's own); return its result."""
        return await self._client.run(tool_call(name, args, timeout), timeout=reply_wait(self._client.timeout, timeout))

    async def list(self) -> ToolListResult:
        """The tools this agent may call, with their argument schemas."""
        return await self._client.run(tool_list())


class AsyncMemorySyscalls:
    """``memory.*`` syscalls of an :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def add(self, content: str, tags: list[str] | None = None, metadata: dict[str, Any] | None = None) -> NoteRef:
        """Store a note; return its id."""
        return await self._client.run(memory_add(content, tags, metadata))

    async def get(self, note_id: str) -> Note:
        """Fetch a note."""
        return await self._client.run(memory_get(note_id))

    async def update(
        self,
        note_id: str,
        content: str | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Note:
        """Change a note; return it as stored."""
        return await self._client.run(memory_update(note_id, content, tags, metadata))

    async def delete(self, note_id: str) -> NoteRef:
        """Delete a note."""
        return await self._client.run(memory_delete(note_id))

    async def search(
        self,
        query: str,
        tags: list[str] | None = None,
        limit: int = 10,
        owner: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> SearchResult:
        """Rank this agent's notes (or ``owner``'s, if shared with it) against ``query``, best first."""
        return await self._client.run(memory_search(query, tags, limit, owner, created_after, created_before))
