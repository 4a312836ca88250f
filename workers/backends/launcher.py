"""Launch ``python -m sglang.launch_server`` on this host's GPU and supervise it.

:class:`SGLangLaunch` builds the command line; :class:`ServerSupervisor`
runs it as a child process in its own process group (SGLang forks scheduler
and detokenizer processes: the whole group is stopped together), waits until
``GET /health`` answers 200, restarts the server with back-off when it dies,
and stops it on :meth:`ServerSupervisor.close` (SIGTERM, then SIGKILL after a
grace period). After ``max_restarts`` failed starts in a row it gives up and
``state`` becomes ``"failed"``: the worker should then exit non-zero and let
systemd decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal

import httpx
import structlog

from .base import BackendUnavailable

log = structlog.get_logger(__name__)

State = Literal["stopped", "starting", "ready", "restarting", "failed"]


@dataclass(frozen=True)
class SGLangLaunch:
    """The options of ``sglang.launch_server`` that a worker sets."""

    model_path: str
    port: int = 30000
    host: str = "127.0.0.1"
    mem_fraction_static: float | None = None
    max_running_requests: int | None = None
    schedule_policy: str | None = None  # lpm (prefix-aware), fcfs, random, dfs-weight
    enable_metrics: bool = True
    extra_args: tuple[str, ...] = ()
    #: The program to run; tests put a stand-in script here.
    program: tuple[str, ...] = field(default_factory=lambda: (sys.executable, "-m", "sglang.launch_server"))

    @property
    def url(self) -> str:
        """Base URL the server will listen on."""
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The full command line."""
        cmd = [*self.program, "--model-path", self.model_path, "--host", self.host, "--port", str(self.port)]
        if self.mem_fraction_static is not None:
            cmd += ["--mem-fraction-static", str(self.mem_fraction_static)]
        if self.max_running_requests is not None:
            cmd += ["--max-running-requests", str(self.max_running_requests)]
        if self.schedule_policy is not None:
            cmd += ["--schedule-policy", self.schedule_policy]
        if self.enable_metrics:
            cmd.append("--enable-metrics")
        return [*cmd, *self.extra_args]


class ServerSupervisor:
    """Keeps one HTTP inference server process alive; see the module doc."""

    def __init__(
        self,
        command: Sequence[str],
        health_url: str,
        *,
        startup_timeout: float = 900.0,
        restart_delay: float = 1.0,
        max_restarts: int = 5,
        stop_grace: float = 20.0,
        env: dict[str, str] | None = None,
        output: IO[bytes] | int | None = None,
    ) -> None:
        self.command = list(command)
        self.health_url = health_url
        self.startup_timeout = startup_timeout
        self.restart_delay = restart_delay
        self.max_restarts = max_restarts
        self.stop_grace = stop_grace
        self.env = env
        self.output = output
        self.state: State = "stopped"
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None

    @classmethod
    def for_sglang(cls, launch: SGLangLaunch, **options: Any) -> ServerSupervisor:
        """A supervisor for ``sglang.launch_server`` with ``launch``'s options."""
        return cls(launch.command(), f"{launch.url}/health", **options)

    @property
    def pid(self) -> int | None:
        """Process id of the running server, if any."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def start(self) -> None:
        """Start the server and wait until it is healthy; then watch it."""
        self.state = "starting"
        try:
            await self._spawn_and_wait()
        except BaseException:
            await self._stop_process()
            self.state = "failed"
            raise
        self._watch = asyncio.create_task(self._watch_loop(), name="sglang-supervisor")

    async def close(self) -> None:
        """Stop watching and stop the server (whole process group). Idempotent."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        await self._stop_process()
        self.state = "stopped"

    async def _spawn_and_wait(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self.output,
            stderr=self.output,
            env=self.env,
            start_new_session=True,  # its own process group, stopped as one
        )
        log.info("server_spawned", pid=self._proc.pid, command=" ".join(self.command))
        await self._wait_healthy(self._proc)
        self.state = "ready"
        log.info("server_ready", pid=self._proc.pid, restarts=self.restarts)

    async def _wait_healthy(self, proc: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + self.startup_timeout
        async with httpx.AsyncClient(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if proc.returncode is not None:
                    raise BackendUnavailable(f"server exited with code {proc.returncode} while starting")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.health_url)).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise BackendUnavailable(f"server not healthy within {self.startup_timeout:g}s")

    async def _watch_loop(self) -> None:
        failures = 0
        while True:
            assert self._proc is not None
            code = await self._proc.wait()
            log.warning("server_died", pid=self._proc.pid, returncode=code)
            await self._stop_process()  # reap any children left in its group
            self.state = "restarting"
            while True:
                await asyncio.sleep(min(self.restart_delay * 2**failures, 30.0))
                self.restarts += 1
                try:
                    await self._spawn_and_wait()
                    failures = 0
                    break
                except BackendUnavailable as exc:
                    failures += 1
                    log.error("server_restart_failed", error=str(exc), failures=failures)
                    await self._stop_process()
                    if failures >= self.max_restarts:
                        self.state = "failed"
                        return

    async def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.stop_grace)
        except TimeoutError:
            log.warning("server_kill", pid=proc.pid)
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        # Children that outlived the leader still belong to the group.
        _signal_group(proc.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
