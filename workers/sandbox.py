"""Run one tool call in a child process: its own session, scratch directory, limits and clock.

The child (:mod:`.toolchild`) is a fresh interpreter started with a minimal
environment (no ``AIOSD_*`` settings, no credentials), in a new session (so
its process group holds everything it starts), with a private scratch
directory as its working directory, ``HOME`` and ``TMPDIR``. It sets its own
resource limits before it imports the tool. The parent enforces the
wall-clock timeout: when it passes, the whole process group is killed with
SIGKILL. The group is killed and the scratch directory removed after every
call, however it ended; should the tools process itself die, the child is
killed with it (``PR_SET_PDEATHSIG``; under systemd the unit's cgroup takes
anything left).

There is no network namespace: the built-in tools simply do not use the
network, and the systemd unit's sandboxing applies to the children too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.protocol import ErrorCode
from aiosd.sdk.tools import ToolFailure

log = get_logger(__name__)

#: Largest control message (the tool's result) a child may send.
MAX_RESULT_BYTES = 1024 * 1024
#: How much of a child's stderr is kept for error messages.
STDERR_TAIL = 2000

#: ``(agent, service, params) -> result``: a kernel service a child asked for.
Serve = Callable[[str, str, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Limits:
    """Per-call limits (see the ``tool_*`` settings)."""

    timeout: float
    memory_mb: int
    cpu_seconds: int
    open_files: int = 64
    file_mb: int = 64


@dataclass(frozen=True)
class Job:
    """One call: which tool (``module:attr``), its validated args, who asked."""

    entry: str
    name: str
    args: dict[str, Any]
    agent: str
    call_id: str
    limits: Limits


@dataclass(frozen=True)
class Done:
    """A call that returned."""

    value: Any
    duration_ms: float


async def run_job(job: Job, serve: Serve | None = None, scratch_root: str | None = None) -> Done:
    """Run ``job`` in a child; its result, or :class:`ToolFailure`."""
    scratch = tempfile.mkdtemp(prefix=f"aiosd-tool-{job.name}-", dir=scratch_root)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",
        "-m",
        "aiosd.workers.toolchild",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=scratch,
        env=child_env(scratch),
        start_new_session=True,
        limit=MAX_RESULT_BYTES,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    tail = asyncio.ensure_future(_tail(proc.stderr))
    try:
        request = {
            "entry": job.entry,
            "args": job.args,
            "agent": job.agent,
            "call_id": job.call_id,
            "timeout": job.limits.timeout,
            "limits": asdict(job.limits),
            "parent": os.getpid(),
        }
        proc.stdin.write(json.dumps(request).encode() + b"\n")
        try:
            value = await asyncio.wait_for(_attempt(proc, job, serve, tail), job.limits.timeout)
        except TimeoutError:
            raise ToolFailure(
                ErrorCode.TIME_LIMIT_EXCEEDED,
                f"{job.name} ran longer than its timeout of {job.limits.timeout:g}s and was killed",
            ) from None
        return Done(value, round((time.monotonic() - started) * 1000.0, 3))
    finally:
        kill_group(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            await proc.wait()
        tail.cancel()
        shutil.rmtree(scratch, ignore_errors=True)


def child_env(scratch: str) -> dict[str, str]:
    """The child's whole environment: nothing of the parent's but the Python path."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": scratch,
        "TMPDIR": scratch,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def kill_group(pgid: int) -> None:
    """SIGKILL every process of the call's process group (the child and all it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _attempt(proc: asyncio.subprocess.Process, job: Job, serve: Serve | None, tail: asyncio.Future[str]) -> Any:
    """The call's result; when the child ends without one, why (from its exit status and stderr)."""
    try:
        return await _converse(proc, job, serve)
    except _Ended:
        returncode = await proc.wait()
        raise _ended(job, returncode, await _result_of(tail)) from None


class _Ended(Exception):
    """The child closed its control channel without a final message."""


async def _converse(proc: asyncio.subprocess.Process, job: Job, serve: Serve | None) -> Any:
    assert proc.stdin is not None and proc.stdout is not None
    while True:
        try:
            line = await proc.stdout.readline()
        except ValueError:  # longer than the stream limit
            raise ToolFailure(ErrorCode.TOO_LARGE, f"{job.name} returned more than {MAX_RESULT_BYTES} bytes") from None
        if not line:
            raise _Ended()
        try:
            message = json.loads(line)
        except ValueError:
            raise ToolFailure(ErrorCode.TOOL_FAILED, f"{job.name} garbled its control channel") from None
        op = message.get("op") if isinstance(message, dict) else None
        if op == "result":
            return message.get("value")
        if op == "error":
            raise ToolFailure(_code(message.get("code")), str(message.get("message") or "the tool failed"))
        if op == "call":
            answer = await _kernel_call(job, serve, str(message.get("service")), message.get("params") or {})
            proc.stdin.write(json.dumps(answer).encode() + b"\n")
            await proc.stdin.drain()


async def _kernel_call(job: Job, serve: Serve | None, service: str, params: dict[str, Any]) -> dict[str, Any]:
    if serve is None:
        return {"error": f"kernel service {service} is not available here", "code": "tool_failed"}
    try:
        return {"ok": await serve(job.agent, service, params)}
    except ToolFailure as exc:
        return {"error": exc.message, "code": exc.code.value}
    except Exception as exc:  # a failing service fails the call, not the tool runner
        log.warning("kernel_service_failed", service=service, agent=job.agent, error=repr(exc))
        return {"error": f"kernel service {service} failed: {type(exc).__name__}", "code": "unavailable"}


#: The codes a child may report (anything else becomes ``tool_failed``).
CHILD_CODES = frozenset(
    {
        ErrorCode.TOOL_FAILED,
        ErrorCode.INVALID_ARGS,
        ErrorCode.NOT_FOUND,
        ErrorCode.TOO_LARGE,
        ErrorCode.UNAVAILABLE,
        ErrorCode.RESOURCE_LIMIT_EXCEEDED,
    }
)


def _code(value: Any) -> ErrorCode:
    try:
        code = ErrorCode(value)
    except ValueError:
        return ErrorCode.TOOL_FAILED
    return code if code in CHILD_CODES else ErrorCode.TOOL_FAILED


def _ended(job: Job, returncode: int, stderr: str) -> ToolFailure:
    """Why a child ended without a result, from its exit status and the end of its stderr."""
    limits = job.limits
    if returncode < 0:
        sig = signal.Signals(-returncode)
        if sig == signal.SIGXCPU:
            return ToolFailure(
                ErrorCode.TIME_LIMIT_EXCEEDED, f"{job.name} used its {limits.cpu_seconds}s of CPU time and was killed"
            )
        if sig == signal.SIGXFSZ:
            return ToolFailure(
                ErrorCode.RESOURCE_LIMIT_EXCEEDED, f"{job.name} wrote a file larger than {limits.file_mb} MiB"
            )
        if sig in (signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT):
            return ToolFailure(
                ErrorCode.RESOURCE_LIMIT_EXCEEDED,
                f"{job.name} was killed by {sig.name} (usually its memory limit of {limits.memory_mb} MiB)",
            )
        return ToolFailure(ErrorCode.TOOL_FAILED, f"{job.name} was killed by {sig.name}")
    if "MemoryError" in stderr:
        return ToolFailure(
            ErrorCode.RESOURCE_LIMIT_EXCEEDED, f"{job.name} ran out of memory (limit {limits.memory_mb} MiB)"
        )
    last = stderr.strip().splitlines()[-1:] or ["no output"]
    return ToolFailure(
        ErrorCode.TOOL_FAILED, f"{job.name} exited with status {returncode} without a result: {last[0][:300]}"
    )


async def _tail(stream: asyncio.StreamReader) -> str:
    kept = b""
    while chunk := await stream.read(65536):
        kept = (kept + chunk)[-STDERR_TAIL:]
    return kept.decode("utf-8", errors="replace")


async def _result_of(task: asyncio.Future[str]) -> str:
    try:
        return await asyncio.wait_for(asyncio.shield(task), 1.0)
    except (TimeoutError, asyncio.CancelledError):
        return ""
