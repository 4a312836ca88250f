"""``aiosd status`` against a live system, and its health rules in process.

The live test runs a real scheduler and a real ``aiosd worker`` (the embedded
SmolLM2) in a world of its own: healthy (exit 0), dead letters growing
(exit 1), the worker killed with SIGKILL and an LLM call queued for it
(shown dead, exit 2), the scheduler stopped (shown stopped, exit 2).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from aiosd.daemon.admin.overview import backlog, health, leases
from aiosd.sdk.protocol import utcnow

from .harness import WorkerProcess, World, aiosd_cli, aiosd_command
from .rawamqp import RawAgent

pytestmark = pytest.mark.timeout(300)


def status(world: World, *flags: str) -> tuple[int, dict[str, Any]]:
    done = aiosd_cli(world, "status", "--json", *flags)
    assert done.returncode in (0, 1, 2), done.stderr
    return done.returncode, json.loads(done.stdout)


def wait_status(world: World, check: Callable[[int, dict[str, Any]], bool], timeout: float = 60.0) -> dict[str, Any]:
    """Poll ``aiosd status --json`` until ``check(exit code, overview)`` holds; the overview."""
    deadline = time.monotonic() + timeout
    code, view = status(world)
    while not check(code, view):
        assert time.monotonic() < deadline, json.dumps(view, indent=1)
        time.sleep(1.0)
        code, view = status(world)
    return view


def rules(view: dict[str, Any]) -> set[str]:
    return {p["rule"] for p in view["health"]["problems"]}


def worker(view: dict[str, Any], worker_id: str) -> dict[str, Any]:
    return next(w for w in view["workers"] if w["id"] == worker_id)


def test_status_of_a_live_system(world: World, make_scheduler: Any, tmp_path: Path) -> None:
    scheduler = make_scheduler(worker_timeout="3").start()
    cpu = WorkerProcess(world, tmp_path, worker_id="cpu0", heartbeat_interval="0.5").start()
    agent = RawAgent(world.amqp_url())
    try:
        # Healthy: the scheduler is up, the worker reports, the queues exist.
        view = wait_status(world, lambda code, v: code == 0 and any(w["id"] == "cpu0" for w in v["workers"]))
        (sched,) = view["schedulers"]
        assert sched["state"] == "up" and sched["policy"] == "priority" and sched["version"]
        assert sched["uptime_seconds"] >= 0 and sched["last_seen_ago"] < 15
        cpu_row = worker(view, "cpu0")
        assert (cpu_row["kind"], cpu_row["state"], cpu_row["backend"]) == ("llm", "up", "llamacpp")
        assert cpu_row["capacity"] >= 1 and cpu_row["in_flight"] == 0 and cpu_row["model"]
        assert view["health"] == {"status": "healthy", "exit_code": 0, "problems": []}
        assert view["queues"]["error"] is None
        wait_status(world, lambda _, v: "aiosd.syscalls" in v["queues"]["depths"], timeout=30)

        # A message the scheduler cannot decode is dead-lettered: degraded (exit 1) while the queue grows.
        agent.publish(b"{not json", routing_key="memory.add")
        view = wait_status(world, lambda code, v: code == 1 and "dead_letters" in rules(v), timeout=45)
        assert view["queues"]["depths"]["aiosd.dead"]["messages"] >= 1
        assert view["health"]["status"] == "degraded"

        # kill -9 the worker, then queue an LLM call nobody can serve: unhealthy (exit 2).
        cpu.signal(signal.SIGKILL)
        cpu.wait(10)
        wait_status(world, lambda _, v: worker(v, "cpu0")["state"] == "dead", timeout=30)
        call = json.dumps({"syscall": "llm.chat", "args": {"messages": [{"role": "user", "content": "hi"}]}})
        agent.publish(call.encode(), routing_key="llm.chat", priority=3)
        view = wait_status(world, lambda code, v: code == 2 and "llm_workers" in rules(v), timeout=30)
        assert worker(view, "cpu0")["state"] == "dead"
        assert view["backlog"]["queued_by_priority"]["llm"] == {"3": 1}
        assert "queued for any model: no live worker" in json.dumps(view["health"]["problems"])
        screen = aiosd_cli(world, "status")
        assert screen.returncode == 2 and "unhealthy" in screen.stdout and "dead" in screen.stdout, screen.stdout

        # A stopped scheduler says so.
        scheduler.signal(signal.SIGTERM)
        assert scheduler.wait(60) == 0
        view = wait_status(world, lambda code, v: v["schedulers"][0]["state"] == "stopped", timeout=20)
        assert "scheduler" in rules(view) and view["health"]["exit_code"] == 2
    finally:
        agent.close()
        cpu.stop()


def test_watch_prints_a_json_line_per_refresh_and_exits_with_the_last_code(world: World) -> None:
    env = world.env()
    proc = subprocess.Popen(
        aiosd_command("status", "--watch", "--json", "--interval", "0.3"), env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        lines = [json.loads(proc.stdout.readline()) for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(20)
    assert [line["health"]["status"] for line in lines] == ["unhealthy"] * 3  # no scheduler in this world
    assert code == 2


# -- the rules, in process --------------------------------------------------------------


def view_of(**parts: Any) -> dict[str, Any]:
    now = utcnow()
    view: dict[str, Any] = {
        "schedulers": [{"id": "h-1", "state": "up"}],
        "workers": [],
        "runners": [],
        "queues": {"error": None, "depths": {}, "dead_growth": 0},
        "backlog": backlog([], now),
        "leases": leases([], now, set()),
    }
    view.update(parts)
    return view


def test_health_rules() -> None:
    now = utcnow()
    assert health(view_of())["exit_code"] == 0
    dead = health(view_of(schedulers=[{"id": "h-1", "state": "dead"}]))
    assert dead["exit_code"] == 2 and "h-1) is dead" in dead["problems"][0]["message"]
    queued = [{"syscall": "llm.chat", "state": "queued", "priority": 2, "hint": {"model": "big"}, "queued_at": now}]
    small = {"id": "w", "kind": "llm", "model": "small", "state": "up"}
    view = view_of(backlog=backlog(queued, now), workers=[small])
    assert [p["rule"] for p in health(view)["problems"]] == ["llm_workers"]
    assert health(view_of(backlog=backlog(queued, now), workers=[{**small, "model": "big"}]))["exit_code"] == 0
    assert (
        health(view_of(backlog=backlog(queued, now), workers=[{**small, "model": "big", "state": "dead"}]))["exit_code"]
        == 2
    )
    tools = [{"syscall": "tool.call", "state": "queued", "priority": 0, "hint": {"name": "calculator"}}]
    assert [p["rule"] for p in health(view_of(backlog=backlog(tools, now)))["problems"]] == ["tool_runners"]
    waiting = {"error": None, "depths": {"aiosd.tasks": {"ready": 4, "messages": 4}}, "dead_growth": 0}
    assert health(view_of(queues=waiting))["problems"][0]["rule"] == "task_runners"
    assert health(view_of(queues=waiting, runners=[{"state": "up"}]))["exit_code"] == 0
    growing = {"error": None, "depths": {"aiosd.dead": {"messages": 9}}, "dead_growth": 2}
    assert health(view_of(queues=growing)) == {
        "status": "degraded",
        "exit_code": 1,
        "problems": [
            {
                "rule": "dead_letters",
                "severity": "warning",
                "message": "2 message(s) dead-lettered in the last 60s (9 in aiosd.dead; `aiosd audit tail` says why)",
            }
        ],
    }
    unreadable = {"error": "RabbitMQ management API unreachable", "depths": {}, "dead_growth": None}
    assert health(view_of(queues=unreadable))["exit_code"] == 1


def test_leases_expiring_are_those_of_silent_workers() -> None:
    now = utcnow()
    docs = [
        {"state": "leased", "lease": {"worker": "a", "granted_at": now - timedelta(seconds=30)}},
        {"state": "leased", "lease": {"worker": "b", "granted_at": now - timedelta(seconds=5)}},
        {"state": "leased", "lease": {"worker": "b", "granted_at": now}},
        {"state": "queued", "syscall": "llm.chat"},
    ]
    found = leases(docs, now, live_workers={"a"})
    assert found == {"held": 3, "by_worker": {"a": 1, "b": 2}, "expiring": 2, "oldest_seconds": 30.0}
