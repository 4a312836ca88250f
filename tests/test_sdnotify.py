"""Under systemd: the scheduler and the worker send READY=1, watchdog pings and STOPPING=1."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import SchedulerProcess, WorkerProcess, World


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.5)
    yield sock, path
    sock.close()


def collect(sock: socket.socket, until: str, timeout: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            continue
        if until in got:
            return got
    raise AssertionError(f"no {until!r} in {got}")


@pytest.mark.parametrize("kind", ["scheduler", "worker"])
def test_ready_watchdog_stopping(
    world: World, tmp_path: Path, notify_socket: tuple[socket.socket, str], kind: str
) -> None:
    sock, path = notify_socket
    helper = SchedulerProcess(world, tmp_path).start() if kind == "worker" else None
    proc = SchedulerProcess(world, tmp_path) if kind == "scheduler" else WorkerProcess(world, tmp_path)
    proc.env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
    try:
        proc.start(wait=False)
        seen = collect(sock, "READY=1", 90)
        pings = [line for line in collect(sock, "WATCHDOG=1", 10) if line == "WATCHDOG=1"]
        time.sleep(1.0)
        pings += [line for line in collect(sock, "WATCHDOG=1", 10) if line == "WATCHDOG=1"]
        assert len(pings) >= 2  # the watchdog keeps being fed while serving
        proc.signal(signal.SIGTERM)
        seen += collect(sock, "STOPPING=1", 60)
        assert proc.wait(90) == 0
        assert seen.index("READY=1") < seen.index("STOPPING=1")
    finally:
        proc.stop()
        if helper is not None:
            helper.stop()
