"""Agent programs run as tasks: scheduler + ``aiosd runner`` with real RabbitMQ and MongoDB.

The programs here make kernel syscalls only (the ``echo`` program); the ones
that need the LLM are in ``test_tasks_llm.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aiosd.sdk import Client
from aiosd.sdk.errors import CallError

from .harness import AgentRegistry, RunnerProcess, SchedulerProcess, World

pytestmark = pytest.mark.timeout(300)


#: Seconds a runner's task lease lasts (the ``task_scheduler`` fixture reads it).
TASK_LEASE_TTL = 2


@pytest.fixture(scope="module")
def alice_url(registry: AgentRegistry, task_scheduler: SchedulerProcess) -> str:
    return registry.add("alice")


@pytest.fixture
def runner(shared_world: World, tmp_path: Path, runner_url: str) -> Iterator[RunnerProcess]:
    proc = RunnerProcess(shared_world, tmp_path, runner_url, task_lease_ttl="2", runner_capacity="4").start()
    yield proc
    proc.stop()


def wait_task(client: Client, task_id: str, timeout: float = 60.0, until: tuple[str, ...] = ()) -> dict[str, Any]:
    """Poll ``task.get`` until the task is final (or in one of ``until``)."""
    deadline = time.monotonic() + timeout
    while True:
        task = client.call("task.get", {"id": task_id})
        if task["state"] in (until or ("succeeded", "failed", "cancelled", "expired")):
            return dict(task)
        assert time.monotonic() < deadline, f"task {task_id} is still {task['state']}"
        time.sleep(0.2)


def test_program_runs_end_to_end_under_its_agent(
    shared_world: World, registry: AgentRegistry, alice_url: str, runner: RunnerProcess
) -> None:
    alice = registry.name("alice")
    with Client(alice_url, timeout=30) as client:
        task = client.call("task.submit", {"program": "echo", "input": {"value": 7, "notes": 2}})
        assert task["state"] == "queued" and task["agent"] == alice
        done = wait_task(client, task["id"])
    assert done["state"] == "succeeded", done
    assert done["output"]["echo"] == {"value": 7, "notes": 2} and len(done["output"]["notes"]) == 2
    assert done["usage"]["syscalls"] == 2 and done["usage"]["wall_ms"] > 0 and done["attempts"] == 1
    db = shared_world.db()
    # The program's syscalls ran as alice, recorded under the task's program id, with replayable ids.
    calls = list(db["results"].find({"program": task["id"]}))
    assert sorted(c["id"] for c in calls) == [f"{task['id']}.1", f"{task['id']}.2"]
    assert {c["agent"] for c in calls} == {alice} and {c["syscall"] for c in calls} == {"memory.add"}
    notes = list(db["memory"].find({"_id": {"$in": done["output"]["notes"]}}))
    assert {n["agent"] for n in notes} == {alice}


def test_same_idempotency_key_submits_once(alice_url: str, task_scheduler: SchedulerProcess) -> None:
    with Client(alice_url, timeout=30) as client:
        first = client.call("task.submit", {"program": "echo", "input": 1, "idempotency_key": "k-1"})
        again = client.call("task.submit", {"program": "echo", "input": 1, "idempotency_key": "k-1"})
        other = client.call("task.submit", {"program": "echo", "input": 1, "idempotency_key": "k-2"})
    assert first["id"] == again["id"] != other["id"]


def test_runner_cannot_act_for_a_task_it_does_not_hold(
    registry: AgentRegistry, alice_url: str, runner_url: str, task_scheduler: SchedulerProcess
) -> None:
    with Client(alice_url, timeout=30) as alice, Client(runner_url, timeout=30) as runner:
        task = alice.call("task.submit", {"program": "echo", "input": "held by nobody"})
        # Not started: no lease at all.
        with pytest.raises(CallError) as refused:
            runner.call("memory.add", {"content": "x"}, task={"id": task["id"], "lease": "forged"})
        assert refused.value.code == "denied" and "not running" in refused.value.message
        start = runner.call("task.start", {"id": task["id"]})
        assert start["action"] == "run" and start["agent"] == registry.name("alice")
        # A wrong token, or a task id that does not exist.
        for binding in ({"id": task["id"], "lease": "0" * 32}, {"id": "t-nope", "lease": start["lease"]}):
            with pytest.raises(CallError) as refused:
                runner.call("memory.add", {"content": "x"}, task=binding)
            assert refused.value.code == "denied"
        # An agent that is not a runner can neither start tasks nor borrow a lease.
        with pytest.raises(CallError) as refused:
            alice.call("task.start", {"id": task["id"]})
        assert refused.value.code == "denied"
        with pytest.raises(CallError) as refused:
            alice.call("memory.add", {"content": "x"}, task={"id": task["id"], "lease": start["lease"]})
        assert refused.value.code == "denied"
        # With the lease it holds, the runner acts as alice -- and nothing else.
        ref = runner.call("memory.add", {"content": "for alice"}, task={"id": task["id"], "lease": start["lease"]})
        note = alice.call("memory.get", {"id": ref["id"]})
        assert note["content"] == "for alice"
        done = runner.call("task.finish", {"id": task["id"], "lease": start["lease"], "output": {"ok": True}})
        assert done["state"] == "succeeded"
        # Once the task is final its lease is void.
        with pytest.raises(CallError) as refused:
            runner.call("memory.add", {"content": "late"}, task={"id": task["id"], "lease": start["lease"]})
        assert refused.value.code == "denied"


def test_divergent_replay_is_reported(alice_url: str, runner_url: str, task_scheduler: SchedulerProcess) -> None:
    with Client(alice_url, timeout=30) as alice, Client(runner_url, timeout=30) as runner:
        task = alice.call("task.submit", {"program": "echo", "input": "replay me"})
        first = runner.call("task.start", {"id": task["id"]})
        bound = {"id": task["id"], "lease": first["lease"]}
        ref = runner.call("memory.add", {"content": "step one"}, task=bound, message_id=f"{task['id']}.1")
        # The lease runs out (no heartbeat); the task is taken over, attempt 2, and replays.
        deadline = time.monotonic() + 30
        while (again := runner.call("task.start", {"id": task["id"]}))["action"] == "wait":
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert again["action"] == "run" and again["attempt"] == 2
        bound = {"id": task["id"], "lease": again["lease"]}
        same = runner.call("memory.add", {"content": "step one"}, task=bound, message_id=f"{task['id']}.1")
        assert same == ref  # the stored reply: not run again
        with pytest.raises(CallError) as diverged:
            runner.call("memory.add", {"content": "step ONE"}, task=bound, message_id=f"{task['id']}.1")
        assert diverged.value.code == "replay_diverged" and "same order" in diverged.value.message
        with pytest.raises(CallError) as diverged:
            runner.call("memory.search", {"query": "step"}, task=bound, message_id=f"{task['id']}.1")
        assert diverged.value.code == "replay_diverged"
        # The old lease is void now.
        with pytest.raises(CallError) as refused:
            runner.call("memory.add", {"content": "zombie"}, task={"id": task["id"], "lease": first["lease"]})
        assert refused.value.code == "denied"


def test_cancel_and_deadline(
    shared_world: World, tmp_path: Path, alice_url: str, runner_url: str, task_scheduler: SchedulerProcess
) -> None:
    with Client(alice_url, timeout=30) as client:
        cancelled = client.call("task.submit", {"program": "echo", "input": "never"})
        assert client.call("task.cancel", {"id": cancelled["id"]})["state"] == "cancelled"
        soon = (datetime.now(UTC) + timedelta(seconds=0.5)).isoformat()
        expiring = client.call("task.submit", {"program": "echo", "input": "late", "deadline": soon})
        time.sleep(1.0)
        runner = RunnerProcess(shared_world, tmp_path, runner_url, task_lease_ttl="2").start()
        try:
            assert wait_task(client, expiring["id"])["state"] == "expired"
            assert wait_task(client, cancelled["id"])["state"] == "cancelled"
            deadline = time.monotonic() + 20
            while shared_world.queue_depth("aiosd.tasks") and time.monotonic() < deadline:
                time.sleep(0.3)
            assert shared_world.queue_depth("aiosd.tasks") == 0  # both messages were taken and dropped
        finally:
            runner.stop()
        with pytest.raises(CallError) as missing:
            client.call("task.cancel", {"id": "t-not-mine"})
        assert missing.value.code == "not_found"


def test_program_cannot_exceed_its_agents_policy(
    registry: AgentRegistry, runner: RunnerProcess, task_scheduler: SchedulerProcess
) -> None:
    url = registry.add("carol", "--allow", "task.*", "--allow", "syscall.result")
    with Client(url, timeout=30) as client:
        task = client.call("task.submit", {"program": "echo", "input": {"notes": 1}})
        done = wait_task(client, task["id"])
        assert done["state"] == "failed" and done["error"]["code"] == "denied", done
    url = registry.add("dave", "--program", "summarize")
    with Client(url, timeout=30) as client:
        with pytest.raises(CallError) as refused:
            client.call("task.submit", {"program": "echo", "input": 1})
        assert refused.value.code == "denied" and "echo" in refused.value.message
        # Allowed by the policy but installed on no runner: the task fails and says why.
        url = registry.add("erin")
    with Client(url, timeout=30) as client:
        task = client.call("task.submit", {"program": "nowhere", "input": 1})
        done = wait_task(client, task["id"])
        assert done["state"] == "failed" and done["error"]["code"] == "unknown_program", done
