"""Prometheus metrics: every process serves them, values move with work, the dashboard queries only real ones."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

import aiosd.sdk.process.metrics  # noqa: F401 -- registers every metric
from aiosd.sdk import Client
from aiosd.sdk.errors import CallError

from .harness import AgentRegistry, RunnerProcess, SchedulerProcess, WorkerProcess, World

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "aiosd.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

pytestmark = pytest.mark.timeout(300)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def exported_names() -> set[str]:
    """Every sample name this code base can export (counters with _total, histograms with their series)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        if not family.name.startswith("aiosd_"):
            continue
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{s}" for s in HISTOGRAM_SUFFIXES)
        else:
            names.add(family.name)
    return names


def test_the_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\baiosd_[a-z_]+\b", target["expr"])
    }
    assert len(queried) >= 15
    missing = queried - exported_names()
    assert not missing, f"the dashboard queries metrics no process exports: {sorted(missing)}"
    # Prometheus conventions: counters end in _total, durations are in seconds.
    for family in REGISTRY.collect():
        if family.name.startswith("aiosd_") and family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples served on ``port``, by name and labels."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


@pytest.fixture
def metered(world: World, tmp_path: Path) -> Iterator[dict[str, Any]]:
    ports = {"scheduler": free_port(), "runner": free_port(), "worker": free_port()}
    registry = AgentRegistry(world)
    started: list[SchedulerProcess] = []
    try:
        scheduler = SchedulerProcess(world, tmp_path, metrics_port=str(ports["scheduler"]), task_lease_ttl="3")
        started.append(scheduler.start())
        runner_url = registry.add("runner", "--runner")
        started.append(
            RunnerProcess(world, tmp_path, runner_url, metrics_port=str(ports["runner"]), task_lease_ttl="3").start()
        )
        started.append(WorkerProcess(world, tmp_path, worker_id="cpu0", metrics_port=str(ports["worker"])).start())
        yield {"ports": ports, "alice": registry.add("alice")}
    finally:
        for proc in reversed(started):
            proc.stop()
        registry.cleanup()


def test_every_process_serves_metrics_that_move(metered: dict[str, Any]) -> None:
    ports = metered["ports"]
    before = {name: scrape(port) for name, port in ports.items()}
    assert value(before["runner"], "aiosd_runner_capacity") == 4
    assert value(before["worker"], "aiosd_worker_capacity", kind="llm") >= 1
    with Client(metered["alice"], timeout=120) as client:
        for i in range(5):
            client.call("memory.add", {"content": f"metered note {i}"})
        with pytest.raises(CallError):
            client.call("memory.get", {"id": "missing"})
        client.call("llm.chat", {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4})
        task = client.call("task.submit", {"program": "echo", "input": {"notes": 1}})
        deadline = time.monotonic() + 60
        while client.call("task.get", {"id": task["id"]})["state"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.2)
    time.sleep(0.5)
    after = {name: scrape(port) for name, port in ports.items()}
    sched_b, sched_a = before["scheduler"], after["scheduler"]
    moved = value(sched_a, "aiosd_syscalls_total", syscall="memory.add", outcome="ok") - value(
        sched_b, "aiosd_syscalls_total", syscall="memory.add", outcome="ok"
    )
    assert moved >= 6  # five from alice, one from the echo program
    assert value(sched_a, "aiosd_syscalls_total", syscall="memory.get", outcome="error") >= 1
    assert value(sched_a, "aiosd_syscall_duration_seconds_count", family="memory") >= 6
    assert value(sched_a, "aiosd_syscall_duration_seconds_count", family="llm") >= 1
    assert value(sched_a, "aiosd_tokens_total", type="prompt") > value(sched_b, "aiosd_tokens_total", type="prompt")
    assert value(sched_a, "aiosd_task_transitions_total", state="succeeded") >= 1
    assert value(sched_a, "aiosd_audit_records") > value(sched_b, "aiosd_audit_records")
    assert value(after["worker"], "aiosd_worker_calls_total", status="done") >= 1
    assert value(after["worker"], "aiosd_worker_tokens_total", type="completion") >= 1
    assert value(after["runner"], "aiosd_runner_tasks_total", outcome="succeeded") >= 1
    assert value(after["runner"], "aiosd_runner_syscalls_total") >= 1


def test_a_refused_message_counts_as_a_dead_letter(world: World, tmp_path: Path) -> None:
    port = free_port()
    scheduler = SchedulerProcess(world, tmp_path, metrics_port=str(port)).start()
    try:
        before = value(scrape(port), "aiosd_dead_letters_total", reason="unknown_syscall")
        with Client(world.amqp_url(), timeout=30) as client, pytest.raises(CallError):
            client.call("nope.nothing", {})
        after = value(scrape(port), "aiosd_dead_letters_total", reason="unknown_syscall")
        assert after == before + 1
        assert value(scrape(port), "aiosd_syscalls_total", syscall="unknown", outcome="rejected") >= 1
    finally:
        scheduler.stop()
