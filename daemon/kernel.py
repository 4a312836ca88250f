"""The kernel's syscall table: which service serves which syscall.

Arguments arrive already validated against the SDK catalogue; a handler
returns the result model or raises :class:`SyscallFailed`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from aiosd.sdk.syscalls import ResultArgs, StoredResult

from .context import CallContext
from .errors import NotFound
from .memory import MemoryGuard, MemoryService
from .sessions import SessionService
from .records import Records
from .storage import StorageGuard, StorageService
from .store import Store
from .tools import ToolService

Handler = Callable[[CallContext, Any], BaseModel]


class Kernel:
    """Routes a syscall to the service that serves it."""

    def __init__(self, store: Store, sessions: SessionService, memory_guard: MemoryGuard | None = None,
                 storage_guard: StorageGuard | None = None, tools: ToolService | None = None) -> None:
        memory = MemoryService(store.memory, memory_guard)
        self.storage = storage = StorageService(store.db, storage_guard)
        self._records = Records(store.syscalls, store.results)
        self._table: dict[str, Handler] = {
            "memory.add": memory.add,
            "memory.get": memory.get,
            "memory.update": memory.update,
            "memory.delete": memory.delete,
            "memory.search": memory.search,
            "context.create": sessions.create,
            "context.get": sessions.get,
            "context.append": sessions.append,
            "context.fork": sessions.fork,
            "context.delete": sessions.delete,
            "context.list": sessions.list_sessions,
            "storage.write": storage.write,
            "storage.read": storage.read,
            "storage.list": storage.list_files,
            "storage.stat": storage.stat,
            "storage.delete": storage.delete,
            "storage.rollback": storage.rollback,
            "storage.share": storage.share,
            "storage.unshare": storage.unshare,
            "syscall.result": self.stored_result,
        }
        if tools is not None:
            self._table["tool.list"] = tools.list_tools

    def serves(self, syscall: str) -> bool:
        """Whether this kernel has a handler for ``syscall``."""
        return syscall in self._table

    def defers(self, syscall: str) -> bool:
        """Whether ``syscall`` is served by a worker or tool runner (leased) rather than here."""
        return syscall.startswith("llm.") or syscall == "tool.call"

    def run(self, ctx: CallContext, args: BaseModel) -> BaseModel:
        """Serve one syscall."""
        return self._table[ctx.syscall](ctx, args)

    def stored_result(self, ctx: CallContext, args: ResultArgs) -> StoredResult:
        """``syscall.result``: the caller's own stored reply, by id."""
        doc = self._records.get(ctx.agent, args.id)
        if doc is None:
            raise NotFound(f"no syscall {args.id!r} from this agent")
        return StoredResult(id=args.id, state=doc["state"], reply=doc.get("reply"))
