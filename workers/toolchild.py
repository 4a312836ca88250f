"""The child process that runs one tool call: ``python -P -m aiosd.workers.toolchild``.

Talks to its parent (:mod:`.sandbox`) in JSON lines: the first line on stdin
is the job; the original stdin and stdout are kept as the *control* channel,
fd 0 is pointed at /dev/null and fd 1 at stderr, so whatever the tool reads or
prints cannot corrupt the protocol.
Before the tool's module is even imported the resource limits are set
(address space, CPU time, no core dumps, open files, file size), so they hold
for everything the tool does, and it asks to be killed when its parent
dies. Kernel services (reading the caller's storage)
are requests on the control channel, answered on stdin by the parent, which
scopes them to the calling agent.

Control messages, child to parent: ``{"op": "call", "service", "params"}``,
then exactly one of ``{"op": "result", "value"}`` or
``{"op": "error", "code", "message"}``. Standard library only.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any

from aiosd.sdk.toolkit import TOOL_ERROR_CODES, Tool, ToolContext, ToolError, resolve

MIB = 1024 * 1024
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Be killed if the tools process dies (Linux ``PR_SET_PDEATHSIG``), so no call outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def set_limits(limits: dict[str, int]) -> None:
    """Apply the job's limits to this process (and everything it starts)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cpu = int(limits["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at the soft limit, SIGKILL a second later
    memory = int(limits["memory_mb"]) * MIB
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    files = int(limits["open_files"])
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
    size = int(limits["file_mb"]) * MIB
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


class Channel:
    """The control channel to the parent."""

    def __init__(self, out: IO[str], inp: IO[str]) -> None:
        self._out = out
        self._in = inp

    def send(self, message: dict[str, Any]) -> None:
        self._out.write(json.dumps(message, allow_nan=False, separators=(",", ":")) + "\n")
        self._out.flush()

    def kernel(self, service: str, params: dict[str, Any]) -> Any:
        """One kernel service call, answered by the parent."""
        self.send({"op": "call", "service": service, "params": params})
        line = self._in.readline()
        if not line:
            raise ToolError("the tools process did not answer a kernel call", "tool_failed")
        answer = json.loads(line)
        if "error" in answer:
            code = str(answer.get("code"))
            raise ToolError(str(answer["error"]), code if code in TOOL_ERROR_CODES else "tool_failed")
        return answer["ok"]


def run(job: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """Run the job's tool; the final control message."""
    try:
        tool = resolve(job["entry"])
        if not isinstance(tool, Tool):
            return _error("tool_failed", f"{job['entry']} is not a Tool")
        ctx = ToolContext(
            agent=job["agent"],
            call_id=job["call_id"],
            tool=tool.name,
            scratch=Path.cwd(),
            deadline=time.monotonic() + float(job["timeout"]),
            kernel=channel.kernel,
        )
        value = tool.run(job["args"], ctx)
    except ToolError as exc:
        return _error(exc.code, exc.message)
    except MemoryError:
        return _error("resource_limit_exceeded", f"ran out of memory (limit {job['limits']['memory_mb']} MiB)")
    except RecursionError:
        return _error("tool_failed", "too deep a recursion")
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1:]
        at = f" at {Path(where[0].filename).name}:{where[0].lineno}" if where else ""
        return _error("tool_failed", f"{type(exc).__name__}: {exc}{at}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return _error("tool_failed", f"the tool returned a value that is not JSON: {exc}")
    return {"op": "result", "value": value}


def _error(code: str, message: str) -> dict[str, Any]:
    return {"op": "error", "code": code, "message": message[:2000]}


def main() -> None:
    control = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # the tool's prints go to stderr
    job = json.loads(sys.stdin.readline())
    answers = os.fdopen(os.dup(0), "r", encoding="utf-8")  # kernel-call answers; nothing else is read ahead
    quiet = os.open(os.devnull, os.O_RDONLY)
    os.dup2(quiet, 0)  # a tool reading stdin must not swallow them
    os.close(quiet)
    die_with_parent(int(job["parent"]))
    set_limits(job["limits"])
    channel = Channel(control, answers)
    try:
        channel.send(run(job, channel))
    except MemoryError:
        channel.send(_error("resource_limit_exceeded", "ran out of memory"))
    sys.stdout.flush()
    os._exit(0)  # threads a tool left behind must not keep the call alive


if __name__ == "__main__":
    main()
