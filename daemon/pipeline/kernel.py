"""The kernel's syscall table: which service serves which syscall.

Arguments arrive already validated against the SDK catalogue; a handler
returns the result model or raises :class:`SyscallFailed`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel
from pymongo.errors import PyMongoError

from aiosd.daemon.errors import NotFound, SyscallFailed
from aiosd.daemon.pipeline.records import Records
from aiosd.daemon.services.context import CallContext
from aiosd.daemon.services.memory.service import MemoryService
from aiosd.daemon.services.sessions import SessionService
from aiosd.daemon.services.storage.service import StorageService
from aiosd.daemon.services.tasks.service import TaskService
from aiosd.daemon.services.tools import ToolService
from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.syscalls import ResultArgs, StoredResult

log = get_logger(__name__)

Handler = Callable[[CallContext, Any], BaseModel]
#: Serves a batch of one syscall in one go: a result or an exception per call, in order.
BatchHandler = Callable[[list[tuple[CallContext, Any]]], Sequence[BaseModel | Exception]]


class Kernel:
    """Routes a syscall to the service that serves it."""

    def __init__(
        self,
        records: Records,
        memory: MemoryService,
        sessions: SessionService,
        storage: StorageService,
        tools: ToolService | None = None,
        tasks: TaskService | None = None,
    ) -> None:
        self._records = records
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
        if tasks is not None:
            self._table.update(
                {
                    "task.submit": tasks.submit,
                    "task.get": tasks.get,
                    "task.cancel": tasks.cancel,
                    "task.list": tasks.list_tasks,
                    "task.start": tasks.start,
                    "task.heartbeat": tasks.heartbeat,
                    "task.finish": tasks.finish,
                    "batch.submit": tasks.batch_submit,
                    "batch.get": tasks.batch_get,
                    "batch.cancel": tasks.batch_cancel,
                    "batch.retry": tasks.batch_retry,
                }
            )
        #: Syscalls whose service writes a batch with one round trip (group commit).
        self._batched: dict[str, BatchHandler] = {"memory.add": memory.add_many}

    def run(self, ctx: CallContext, args: BaseModel) -> BaseModel:
        """Serve one syscall."""
        return self._table[ctx.syscall](ctx, args)

    def run_many(self, syscall: str, calls: list[tuple[CallContext, BaseModel]]) -> Sequence[BaseModel | Exception]:
        """Serve a batch of one syscall: a result, or the exception that failed it, per call.

        Database errors are not caught: the calls stay accepted for the sweep.
        """
        batched = self._batched.get(syscall)
        if batched is not None and len(calls) > 1:
            return batched(calls)
        return [self._caught(ctx, args) for ctx, args in calls]

    def _caught(self, ctx: CallContext, args: BaseModel) -> BaseModel | Exception:
        try:
            return self.run(ctx, args)
        except SyscallFailed as exc:
            return exc
        except PyMongoError:
            raise  # infrastructure, not the caller's fault: leave it accepted for the sweep
        except Exception as exc:
            log.exception("syscall_crashed", syscall=ctx.syscall, call_id=ctx.call_id)
            return exc

    def stored_result(self, ctx: CallContext, args: ResultArgs) -> StoredResult:
        """``syscall.result``: the caller's own stored reply, by id."""
        doc = self._records.get(ctx.agent, args.id)
        if doc is None:
            raise NotFound(
                f"no syscall {args.id!r} from this agent is stored: never sent, or still waiting in the queue"
                " (ask again later)"
            )
        return StoredResult(id=args.id, state=doc["state"], reply=doc.get("reply"))
