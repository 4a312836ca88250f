"""The same message_id published twice gives one stored record and one effect."""

from __future__ import annotations

import json

from .harness import SchedulerProcess, World, live_after_retirement
from .rawamqp import RawAgent


def test_duplicate_message_id_runs_once(shared_world: World, scheduler: SchedulerProcess) -> None:
    agent = RawAgent(shared_world.amqp_url())
    body = json.dumps({"syscall": "memory.add", "args": {"content": "exactly once please"}}).encode()
    try:
        first_id = agent.publish(body, message_id="dup-0001")
        first = agent.wait(first_id)
        again_id = agent.publish(body, message_id="dup-0001")
        again = agent.wait(again_id)
    finally:
        agent.close()
    assert first["status"] == again["status"] == "ok"
    assert first["result"] == again["result"]  # the stored reply, not a second run

    db = shared_world.db()
    assert db.results.count_documents({"id": "dup-0001"}) == 1
    assert live_after_retirement(db, {"id": "dup-0001"}) == 0  # nothing left live
    assert db.memory.count_documents({"content": "exactly once please"}) == 1
    accepted = db.audit.count_documents({"message_id": "dup-0001", "decision": "accepted"})
    completed = db.audit.count_documents({"message_id": "dup-0001", "decision": "completed"})
    assert (accepted, completed) == (1, 1)


def test_same_message_id_from_two_agents_is_two_calls(shared_world: World, scheduler: SchedulerProcess) -> None:
    """message_id is unique per agent: another agent reusing it is not a duplicate."""
    db = shared_world.db()
    db.results.delete_many({"id": "shared-id"})
    agent = RawAgent(shared_world.amqp_url())
    try:
        reply = agent.call("memory.add", {"content": "from guest"}, message_id="shared-id")
    finally:
        agent.close()
    assert reply["status"] == "ok"
    record = db.results.find_one({"id": "shared-id"})
    assert record is not None and record["_id"] == "guest/shared-id" and record["agent"] == "guest"
