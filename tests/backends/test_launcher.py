"""Supervision of ``sglang.launch_server``, with a stand-in script as the server."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from sglang_contract import free_port

from aiosd.workers.backends.base import BackendUnavailable, ChatRequest, Message
from aiosd.workers.backends.launcher import ServerSupervisor, SGLangLaunch
from aiosd.workers.backends.sglang import SGLangBackend

FAKE = str(Path(__file__).with_name("fake_launch_server.py"))


def _launch(model_dir: Path) -> SGLangLaunch:
    return SGLangLaunch(
        model_path=str(model_dir),
        port=free_port(),
        mem_fraction_static=0.8,
        max_running_requests=64,
        schedule_policy="lpm",
        program=(sys.executable, FAKE),
    )


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "FAKE_SGLANG_STARTING": "3", **extra}


async def _chat_text(backend: SGLangBackend, text: str) -> str:
    request = ChatRequest(messages=(Message(role="user", content=text),), temperature=0.0)
    return (await backend.chat(request)).text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_command_line() -> None:
    launch = SGLangLaunch(
        model_path="/models/qwen", port=30001, mem_fraction_static=0.85, max_running_requests=128, schedule_policy="lpm"
    )
    assert launch.command()[1:] == [
        "-m",
        "sglang.launch_server",
        "--model-path",
        "/models/qwen",
        "--host",
        "127.0.0.1",
        "--port",
        "30001",
        "--mem-fraction-static",
        "0.85",
        "--max-running-requests",
        "128",
        "--schedule-policy",
        "lpm",
        "--enable-metrics",
    ]
    assert launch.url == "http://127.0.0.1:30001"


def test_waits_for_health_serves_restarts_and_stops(model_dir: Path) -> None:
    launch = _launch(model_dir)

    async def scenario() -> None:
        supervisor = ServerSupervisor.for_sglang(launch, env=_env(), restart_delay=0.1)
        await supervisor.start()  # returns only after the 503s turned into 200
        assert supervisor.state == "ready"
        first = supervisor.pid
        assert first is not None
        backend = SGLangBackend(launch.url)
        await backend.start()
        assert (await _chat_text(backend, "hi")) == "Echo: hi"

        os.kill(first, signal.SIGKILL)  # the server dies ...
        deadline = time.monotonic() + 30
        while (supervisor.pid in (None, first) or supervisor.state != "ready") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert supervisor.state == "ready" and supervisor.restarts == 1  # ... and is back
        assert supervisor.pid not in (None, first)
        assert (await _chat_text(backend, "again")) == "Echo: again"
        second = supervisor.pid

        await backend.close()
        await supervisor.close()
        state: str = supervisor.state  # close() changed them; mypy still has the old narrowing
        pid: int | None = supervisor.pid
        assert (state, pid) == ("stopped", None)
        assert second is not None and not _alive(second)
        await supervisor.close()  # idempotent

    asyncio.run(scenario())


def test_a_server_that_cannot_start_fails_clearly(model_dir: Path) -> None:
    async def scenario() -> ServerSupervisor:
        supervisor = ServerSupervisor.for_sglang(_launch(model_dir), env=_env(FAKE_SGLANG_EXIT="3"))
        with pytest.raises(BackendUnavailable, match="exited with code 3"):
            await supervisor.start()
        return supervisor

    assert asyncio.run(scenario()).state == "failed"


def test_gives_up_after_max_restarts(model_dir: Path, tmp_path: Path) -> None:
    launch = _launch(model_dir)

    async def scenario() -> ServerSupervisor:
        env = _env()
        supervisor = ServerSupervisor.for_sglang(launch, env=env, restart_delay=0.05, max_restarts=2)
        await supervisor.start()
        env["FAKE_SGLANG_EXIT"] = "1"  # every restart from now on fails
        pid = supervisor.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while supervisor.state != "failed" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await supervisor.close()
        return supervisor

    supervisor = asyncio.run(scenario())
    assert supervisor.restarts == 2
