"""Agent programs that use the LLM: scheduler + runner + a worker with the embedded SmolLM2 (all real)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiosd.sdk import Client

from .harness import AgentRegistry, RunnerProcess, ToolsProcess, WorkerProcess, World
from .test_tasks import wait_task

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def llm_world(world: World, tmp_path: Path, make_scheduler: Any) -> Iterator[tuple[AgentRegistry, str, str]]:
    """A scheduler, one CPU worker and a tool runner; an agent and a runner identity."""
    registry = AgentRegistry(world)
    make_scheduler(task_lease_ttl="2").start()
    worker = WorkerProcess(world, tmp_path, worker_id="cpu0", heartbeat_interval="0.5").start()
    tools = ToolsProcess(world, tmp_path, heartbeat_interval="0.5").start()
    try:
        yield registry, registry.add("alice"), registry.add("runner", "--runner")
    finally:
        tools.stop()
        worker.stop()
        registry.cleanup()


def test_sample_programs_run_on_the_embedded_model(
    world: World, tmp_path: Path, llm_world: tuple[AgentRegistry, str, str]
) -> None:
    _, alice_url, runner_url = llm_world
    runner = RunnerProcess(world, tmp_path, runner_url, task_lease_ttl="2").start()
    try:
        with Client(alice_url, timeout=60) as client:
            text = "RabbitMQ queues messages durably. MongoDB stores documents. The scheduler leases LLM calls."
            summary = client.call("task.submit", {"program": "summarize", "input": {"text": text, "max_words": 12}})
            react = client.call("task.submit", {"program": "react", "input": {"question": "What is 12 * 7?"}})
            summarized = wait_task(client, summary["id"], timeout=300)
            answered = wait_task(client, react["id"], timeout=300)
            notes = [client.call("memory.get", {"id": n}) for n in answered["output"]["notes"]]
    finally:
        runner.stop()
    assert summarized["state"] == "succeeded", summarized
    out = summarized["output"]
    assert isinstance(out["summary"], str) and out["summary"] and len(out["summary"].split()) <= 12
    assert "rabbitmq" in out["keywords"] and out["words"] == len(text.split())
    assert summarized["usage"]["syscalls"] == 1 and summarized["usage"]["prompt_tokens"] > 0
    assert answered["state"] == "succeeded", answered
    steps = answered["output"]["steps"]
    assert steps and steps[0]["action"].startswith("calculator") and "84" in {s["observation"] for s in steps}
    assert notes and all("84" in n["content"] or "calculator" in n["content"] for n in notes)
    # The LLM calls ran as alice under the task's program id.
    llm = list(world.db()["results"].find({"program": react["id"], "syscall": "llm.chat"}))
    assert llm and {c["agent"] for c in llm} == {answered["agent"]}


def test_runner_kill_9_mid_task_does_not_run_llm_calls_again(
    world: World, tmp_path: Path, llm_world: tuple[AgentRegistry, str, str]
) -> None:
    _, alice_url, runner_url = llm_world
    first = RunnerProcess(world, tmp_path, runner_url, task_lease_ttl="2").start()
    second: RunnerProcess | None = None
    try:
        with Client(alice_url, timeout=60) as client:
            task = client.call("task.submit", {"program": "steps", "input": {"steps": 5, "max_tokens": 6}})
            results = world.db()["results"]
            deadline = time.monotonic() + 240
            while results.count_documents({"program": task["id"], "syscall": "llm.chat"}) < 2:
                assert time.monotonic() < deadline, "the first two LLM calls never completed"
                time.sleep(0.1)
            first.signal(signal.SIGKILL)
            first.wait()
            done_before = {d["id"] for d in results.find({"program": task["id"], "syscall": "llm.chat"})}
            second = RunnerProcess(world, tmp_path, runner_url, task_lease_ttl="2").start()
            done = wait_task(client, task["id"], timeout=300)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert done["state"] == "succeeded" and done["attempts"] == 2, done
    assert len(done["output"]["texts"]) == 5 and done["usage"]["syscalls"] == 6
    # Counted at the worker: every LLM call of the task ran exactly once, those done before the kill too.
    worker_log = next(tmp_path.glob("worker-cpu0.log")).read_text()
    started: Counter[str] = Counter()
    for line in worker_log.splitlines():
        if '"call_started"' in line and task["id"] in line:
            key = line.split('"key": "', 1)[1].split('"', 1)[0]
            started[key.split("/", 1)[1]] += 1
    assert set(started) == {f"{task['id']}.{n}" for n in range(1, 6)}, started
    assert set(started.values()) == {1}, started
    assert done_before <= set(started) and len(done_before) >= 2
    # The task finished once, by the second runner.
    assert second is not None
    finished = [e for r in (first, second) for e in r.events() if e.get("event") == "task_done"]
    assert [(e["task"], e["attempt"]) for e in finished] == [(task["id"], 2)]
