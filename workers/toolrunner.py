"""The tool runner: what ``aiosd tools`` drives in place of an LLM engine.

A leased ``tool.call`` is checked again against this host's registry (the
scheduler checked it against its own; the two could differ), then run in a
child process (:mod:`.sandbox`) with the call's timeout and the configured
limits, at most ``tools_capacity`` at once. Every lease gets exactly one
outcome: ``done`` with a :class:`~aiosd.sdk.tools.ToolCallResult`, or
``error`` with the code of what went wrong. Tool errors are never retried:
the tool may have had effects.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
from typing import Any

from pydantic import ValidationError

from aiosd.sdk.cluster import Lease, Outcome
from aiosd.sdk.errors import ConfigError
from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.process.settings import Settings
from aiosd.sdk.protocol import ErrorCode, describe_validation
from aiosd.sdk.registry import ToolRegistry
from aiosd.sdk.syscalls import served_by
from aiosd.sdk.tools import ToolCallArgs, ToolCallResult, ToolFailure

from .backends.base import ModelInfo
from .calls import released_outcome
from .config import WorkerConfig, default_worker_id
from .engine import Probe
from .sandbox import Job, Limits, Serve, run_job

log = get_logger(__name__)

BACKEND = "tools"


def tools_config(settings: Settings) -> WorkerConfig:
    """The tool runner's identity and capacity."""
    host = socket.gethostname()
    worker_id = settings.worker_id or default_worker_id(f"{host}-tools")
    return WorkerConfig(worker_id=worker_id, host=host, backend=BACKEND, capacity=settings.tools_capacity)


class ToolEngine:
    """Runs leased tool calls in child processes; a :class:`~.worker.Driver`."""

    def __init__(
        self, config: WorkerConfig, settings: Settings, registry: ToolRegistry, serve: Serve | None = None
    ) -> None:
        self.config = config
        self.settings = settings
        self.registry = registry
        self.serve = serve
        self.info = ModelInfo(name=BACKEND, context_length=0, backend=BACKEND)
        self._slots = asyncio.Semaphore(config.capacity)
        self._running = 0

    async def start(self, timeout: float) -> ModelInfo:
        """Check that scratch directories can be made; raise :class:`ConfigError` if not."""
        root = self.settings.tool_scratch_dir or tempfile.gettempdir()
        if not (os.path.isdir(root) and os.access(root, os.W_OK | os.X_OK)):
            raise ConfigError(f"tool_scratch_dir {root} is not a writable directory")
        log.info(
            "tools_started",
            tools=sorted(self.registry.tools),
            scratch=root,
            memory_mb=self.settings.tool_memory_mb,
            cpu_seconds=self.settings.tool_cpu_seconds,
        )
        return self.info

    async def run(self, lease: Lease) -> Outcome:
        """Run one leased call when a slot is free."""
        async with self._slots:
            self._running += 1
            try:
                return await self._run(lease)
            finally:
                self._running -= 1

    async def _run(self, lease: Lease) -> Outcome:
        base: dict[str, Any] = {
            "worker_id": self.config.worker_id,
            "lease_id": lease.lease_id,
            "key": lease.key,
            "model": BACKEND,
        }
        started = time.monotonic()
        try:
            job = self.job(lease)
            done = await run_job(job, self.serve, self.settings.tool_scratch_dir)
        except ToolFailure as exc:
            log.warning("tool_failed", lease_id=lease.lease_id, key=lease.key, code=exc.code.value, error=exc.message)
            return Outcome(
                **base, status="error", error_code=exc.code, error_message=exc.message, run_ms=_ms_since(started)
            )
        result = ToolCallResult(name=job.name, result=done.value, duration_ms=done.duration_ms)
        return Outcome(**base, status="done", result=result.model_dump(mode="json"), run_ms=_ms_since(started))

    def job(self, lease: Lease) -> Job:
        """The child's job for ``lease``; :class:`ToolFailure` (``invalid_args``) if it cannot run here."""
        if served_by(lease.syscall) != "tools":
            raise ToolFailure(ErrorCode.INVALID_ARGS, f"a tool runner does not serve {lease.syscall}")
        try:
            call = ToolCallArgs.model_validate(lease.args)
        except ValidationError as exc:
            raise ToolFailure(
                ErrorCode.INVALID_ARGS, f"invalid tool.call arguments: {describe_validation(exc)}"
            ) from exc
        problem = self.registry.check(call)
        found = self.registry.get(call.name)
        if problem is not None or found is None:
            raise ToolFailure(ErrorCode.INVALID_ARGS, problem or f"unknown tool {call.name!r}")
        tool = found.tool
        timeout = min(call.timeout or tool.timeout, tool.max_timeout, self.settings.tool_timeout)
        limits = Limits(
            timeout=timeout, memory_mb=self.settings.tool_memory_mb, cpu_seconds=self.settings.tool_cpu_seconds
        )
        return Job(
            entry=found.entry, name=call.name, args=call.args, agent=lease.agent, call_id=lease.call_id, limits=limits
        )

    def interrupted(self, lease: Lease, worker_id: str, reason: str) -> Outcome:
        """A call cut off by a stop: handed back, unless its tool is irreversible (it may have acted)."""
        name = str(lease.args.get("name", ""))
        if not self.registry.irreversible(name):
            return released_outcome(lease, worker_id, reason)
        return Outcome(
            worker_id=worker_id,
            lease_id=lease.lease_id,
            key=lease.key,
            status="error",
            error_code=ErrorCode.UNAVAILABLE,
            retryable=False,
            error_message=f"{reason}: the irreversible tool {name} was interrupted and is not retried "
            "(it may have had effects)",
        )

    async def probe(self, timeout: float) -> Probe:
        """Always healthy while the process runs; reports the calls in flight."""
        return Probe(
            healthy=True, metrics={"in_flight": float(self._running), "tools": float(len(self.registry.tools))}
        )

    async def close(self) -> None:
        """Nothing to close: every child is killed when its call ends or is cancelled."""


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000.0, 3)
