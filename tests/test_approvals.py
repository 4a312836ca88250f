"""Human approvals: pending -> approve -> result; pending -> deny; pending -> expiry -> denied."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from aiosd.sdk import CallError, Client

from .harness import AgentRegistry, World, live_after_retirement
from .rawamqp import RawAgent
from .scripted_worker import wait_until


@pytest.fixture
def registry(world: World) -> Iterator[AgentRegistry]:
    reg = AgentRegistry(world)
    yield reg
    reg.cleanup()


@pytest.fixture
def cautious(world: World, make_scheduler: Any, registry: AgentRegistry) -> Iterator[RawAgent]:
    """A scheduler and an agent whose memory.delete and memory.add need approval."""
    make_scheduler(approval_timeout="600", approval_poll="0.2").start()
    url = registry.add("cautious", "--approve", "memory.delete", "--approve", "memory.add")
    agent = RawAgent(url, user=registry.name("cautious"))
    yield agent
    agent.close()


def publish(agent: RawAgent, syscall: str, args: dict[str, Any]) -> str:
    return agent.publish(json.dumps({"syscall": syscall, "args": args}).encode(), routing_key=syscall)


def pending(registry: AgentRegistry) -> list[dict[str, Any]]:
    done = registry.cli("approvals", "--json")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_pending_then_approved_runs_the_call(world: World, registry: AgentRegistry, cautious: RawAgent) -> None:
    call_id = publish(cautious, "memory.add", {"content": "needs a human"})
    interim = cautious.wait(call_id)
    assert (interim["status"], interim["error"]["code"]) == ("pending", "approval_pending")
    key = f"{registry.name('cautious')}/{call_id}"
    assert key in interim["error"]["message"]
    assert world.db().memory.count_documents({}) == 0  # nothing ran yet

    listed = pending(registry)
    assert [(p["id"], p["syscall"], p["decision"]) for p in listed] == [(key, "memory.add", None)]
    stored = cautious.call("syscall.result", {"id": call_id})
    assert stored["result"]["state"] == "pending_approval" and stored["result"]["reply"] is None

    done = registry.cli("approve", call_id, "--reason", "looks fine")
    assert done.returncode == 0, done.stderr
    final = cautious.wait(call_id)
    assert final["status"] == "ok" and final["result"]["id"].startswith("n_")
    assert world.db().memory.count_documents({"content": "needs a human"}) == 1
    assert pending(registry) == []
    again = registry.cli("approve", call_id)
    assert again.returncode == 1 and "no syscall" in again.stderr
    decisions = [r["decision"] for r in world.db().audit.find({"message_id": call_id}).sort("_id", 1)]
    assert decisions == ["accepted", "pending_approval", "approved", "completed"]
    approved = world.db().audit.find_one({"message_id": call_id, "decision": "approved"})
    assert approved["actor"].startswith("operator:") and approved["reason"] == "looks fine"


def test_pending_then_denied(world: World, registry: AgentRegistry, cautious: RawAgent) -> None:
    call_id = publish(cautious, "memory.add", {"content": "should never be stored"})
    assert cautious.wait(call_id)["status"] == "pending"
    missing_reason = registry.cli("deny", call_id)
    assert missing_reason.returncode == 2  # click usage error: --reason is required
    done = registry.cli("deny", f"{registry.name('cautious')}/{call_id}", "--reason", "not today")
    assert done.returncode == 0, done.stderr
    final = cautious.wait(call_id)
    assert (final["status"], final["error"]["code"]) == ("denied", "approval_denied")
    assert "not today" in final["error"]["message"]
    assert world.db().memory.count_documents({}) == 0
    assert live_after_retirement(world.db(), {}) == 0  # settled: nothing left live


def test_unanswered_approval_expires_to_denied(world: World, make_scheduler: Any, registry: AgentRegistry) -> None:
    make_scheduler(approval_timeout="1.5", approval_poll="0.2").start()
    url = registry.add("hasty", "--approve", "memory.*")
    agent = RawAgent(url, user=registry.name("hasty"))
    try:
        call_id = publish(agent, "memory.add", {"content": "nobody will look"})
        assert agent.wait(call_id)["status"] == "pending"
        final = agent.wait(call_id, timeout=20)
    finally:
        agent.close()
    assert (final["status"], final["error"]["code"]) == ("denied", "approval_denied")
    assert "expired" in final["error"]["message"]
    expired = world.db().audit.find_one({"message_id": call_id, "decision": "approval_denied"})
    assert expired is not None and expired["actor"] == "scheduler"
    assert registry.cli("approve", call_id).returncode == 1  # too late


def test_sdk_waits_through_the_interim_reply(world: World, registry: AgentRegistry, cautious: RawAgent) -> None:
    url = registry.add("sdk", "--approve", "memory.delete")
    with Client(url, timeout=30) as client:
        ref = client.memory.add("keep or drop?")  # memory.add needs no approval for this agent
        approver = threading.Thread(target=_approve_when_pending, args=(registry, world))
        approver.start()
        assert client.memory.delete(ref.id).id == ref.id  # blocks until a human approved
        approver.join(30)
        with pytest.raises(CallError) as err:
            client.memory.get(ref.id)
        assert err.value.code == "not_found"


def _approve_when_pending(registry: AgentRegistry, world: World) -> None:
    key = wait_until(lambda: next((d["_id"] for d in world.db().syscalls.find({"state": "pending_approval"})), None))
    assert registry.cli("approve", key).returncode == 0
