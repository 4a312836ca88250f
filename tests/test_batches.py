"""``aiosd batch``: submit a JSONL file, follow it, export it, cancel and retry, survive a scheduler kill -9."""

from __future__ import annotations

import csv
import io
import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .harness import AgentRegistry, RunnerProcess, SchedulerProcess, World

pytestmark = pytest.mark.timeout(400)


#: Seconds a runner's task lease lasts (the ``task_scheduler`` fixture reads it).
TASK_LEASE_TTL = 3


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def submit(registry: AgentRegistry, path: Path, agent: str, *flags: str) -> str:
    done = registry.cli("batch", "submit", str(path), "--program", "echo", "--agent", agent, "--json", *flags)
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["batch"])


def status(registry: AgentRegistry, batch_id: str) -> dict[str, Any]:
    done = registry.cli("batch", "status", batch_id, "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def wait_batch(registry: AgentRegistry, batch_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (figures := status(registry, batch_id))["state"] not in ("finished", "cancelled"):
        assert time.monotonic() < deadline, figures
        time.sleep(0.5)
    return figures


def export(registry: AgentRegistry, batch_id: str, *flags: str) -> str:
    done = registry.cli("batch", "results", batch_id, *flags)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_invalid_line_is_reported_and_nothing_is_submitted(
    shared_world: World, registry: AgentRegistry, tmp_path: Path, task_scheduler: SchedulerProcess
) -> None:
    agent = registry.name("bob")
    registry.add("bob")
    lines: list[Any] = [{"input": 1}, {"input": 2}, "{not json", {"input": 3}, {"inputs": 4}, {"input": {"$x": 1}}]
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    before = shared_world.db()["tasks"].count_documents({})
    done = registry.cli("batch", "submit", str(path), "--program", "echo", "--agent", agent)
    assert done.returncode != 0
    assert "line 3:" in done.stderr and "line 5:" in done.stderr and "line 6:" in done.stderr, done.stderr
    assert "line 1:" not in done.stderr and "nothing was submitted" in done.stderr
    assert shared_world.db()["tasks"].count_documents({}) == before
    assert shared_world.db()["batches"].count_documents({"agent": agent}) == 0
    # An unknown program is refused before the file is read.
    unknown = registry.cli("batch", "submit", str(path), "--program", "nope", "--agent", agent)
    assert unknown.returncode != 0 and "no program 'nope'" in unknown.stderr
    # --skip-invalid submits the valid lines (and says which were skipped).
    skipped = registry.cli(
        "batch", "submit", str(path), "--program", "echo", "--agent", agent, "--skip-invalid", "--json"
    )
    assert skipped.returncode == 0, skipped.stderr
    summary = json.loads(skipped.stdout)
    assert summary["tasks"] == 3 and [s["line"] for s in summary["skipped"]] == [3, 5, 6]
    registry.cli("batch", "cancel", summary["batch"])


def test_batch_runs_and_exports_in_line_order(
    shared_world: World, registry: AgentRegistry, tmp_path: Path, runner_url: str
) -> None:
    registry.add("carol")
    agent = registry.name("carol")
    lines = [{"input": {"value": i, "notes": i % 2}, "key": f"row-{i}"} for i in range(40)]
    path = write_jsonl(tmp_path / "ok.jsonl", lines)
    runner = RunnerProcess(shared_world, tmp_path, runner_url, task_lease_ttl="3", runner_capacity="6").start()
    try:
        batch_id = submit(registry, path, agent, "--name", "nightly", "--max-concurrent", "3")
        figures = wait_batch(registry, batch_id)
    finally:
        runner.stop()
    assert figures["state"] == "finished" and figures["counts"]["succeeded"] == 40 and figures["done"] == 40
    rows = [json.loads(line) for line in export(registry, batch_id).splitlines()]
    assert [r["key"] for r in rows] == [f"row-{i}" for i in range(40)]
    assert all(r["state"] == "succeeded" and r["output"]["echo"]["value"] == i for i, r in enumerate(rows))
    assert sum(r["syscalls"] for r in rows) == 20  # one note for every odd line
    table = list(csv.DictReader(io.StringIO(export(registry, batch_id, "--format", "csv"))))
    assert len(table) == 40 and json.loads(table[7]["output"])["echo"]["value"] == 7
    out = tmp_path / "failed.jsonl"
    assert export(registry, batch_id, "--failed", "-o", str(out)) == "" and out.read_text() == ""
    listed = registry.cli("batch", "list", "--json")
    assert any(b["id"] == batch_id and b["name"] == "nightly" for b in json.loads(listed.stdout))
    watched = registry.cli("batch", "status", batch_id, "--watch", "--interval", "0.2")
    assert watched.returncode == 0 and "40/40" in watched.stdout and "finished" in watched.stdout


def test_cancel_then_retry_failed(
    shared_world: World, registry: AgentRegistry, tmp_path: Path, runner_url: str
) -> None:
    # dora may not use memory: every task (one note each) fails with `denied`.
    registry.add("dora", "--allow", "task.*")
    agent = registry.name("dora")
    failing = submit(registry, write_jsonl(tmp_path / "f.jsonl", [{"input": {"notes": 1}}] * 6), agent)
    cancelled = submit(registry, write_jsonl(tmp_path / "c.jsonl", [{"input": i} for i in range(8)]), agent)
    done = registry.cli("batch", "cancel", cancelled)
    assert done.returncode == 0 and "cancelled" in done.stdout and "its 8 queued task(s)" in done.stdout, done.stdout
    runner = RunnerProcess(shared_world, tmp_path, runner_url, task_lease_ttl="3").start()
    try:
        figures = wait_batch(registry, failing)
        assert figures["counts"]["failed"] == 6, figures
        rows = [json.loads(line) for line in export(registry, failing, "--failed").splitlines()]
        assert len(rows) == 6 and {r["error_code"] for r in rows} == {"denied"}
        deadline = time.monotonic() + 30
        while (gone := status(registry, cancelled))["counts"]["cancelled"] < 8:
            assert time.monotonic() < deadline, gone
            time.sleep(0.3)
        assert gone["state"] == "cancelled" and gone["counts"]["queued"] == 0 and gone["done"] == 8
        registry.cli("agents", "policy", "set", agent, "--allow", "task.*", "--allow", "memory.*")
        again = registry.cli("batch", "retry", failing, "--failed")
        assert again.returncode == 0 and "6 failed task(s) queued again" in again.stdout, again.stdout
        figures = wait_batch(registry, failing)
    finally:
        runner.stop()
    assert figures["counts"]["succeeded"] == 6 and figures["counts"]["failed"] == 0, figures
    rows = [json.loads(line) for line in export(registry, failing).splitlines()]
    assert all(r["state"] == "succeeded" and r["attempts"] == 2 for r in rows)
    deadline = time.monotonic() + 20
    while shared_world.queue_depth("aiosd.tasks") and time.monotonic() < deadline:
        time.sleep(0.3)
    assert shared_world.queue_depth("aiosd.tasks") == 0


def test_kill_9_of_the_scheduler_mid_batch_ends_every_task_once(
    world: World, tmp_path: Path, make_scheduler: Any
) -> None:
    registry = AgentRegistry(world)
    scheduler = make_scheduler(task_lease_ttl="3").start()
    try:
        registry.add("erin")
        runner_url = registry.add("runner", "--runner")
        path = write_jsonl(tmp_path / "big.jsonl", [{"input": {"value": i}} for i in range(1000)])
        runner = RunnerProcess(world, tmp_path, runner_url, task_lease_ttl="3", runner_capacity="8").start()
        try:
            batch_id = submit(registry, path, registry.name("erin"))
            tasks = world.db()["tasks"]
            deadline = time.monotonic() + 120
            while tasks.count_documents({"batch": batch_id, "state": "succeeded"}) < 200:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            scheduler.signal(signal.SIGKILL)
            scheduler.wait()
            scheduler = make_scheduler(task_lease_ttl="3").start()
            figures = wait_batch(registry, batch_id, timeout=300)
        finally:
            runner.stop()
        assert figures["state"] == "finished" and figures["counts"]["succeeded"] == 1000, figures
        rows = [json.loads(line) for line in export(registry, batch_id).splitlines()]
        assert len(rows) == 1000 and Counter(r["state"] for r in rows) == {"succeeded": 1000}
        assert sorted(r["output"]["echo"]["value"] for r in rows) == list(range(1000))
        # Each task finished exactly once: one task_done per task in the runner's log.
        done = Counter(e["task"] for e in runner.events() if e.get("event") == "task_done")
        assert len(done) == 1000 and set(done.values()) == {1}, [t for t, n in done.items() if n != 1][:5]
    finally:
        scheduler.stop()
        registry.cleanup()
