"""Recovery isolates a record it cannot finish: that syscall fails, the others are finished."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pika

from aiosd.sdk.protocol import INGRESS_QUEUE, utcnow

from .harness import SchedulerProcess, World
from .rawamqp import RawAgent


def _record(message_id: str, **changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "_id": f"guest/{message_id}",
        "id": message_id,
        "agent": "guest",
        "syscall": "memory.add",
        "args": {"content": f"recovered {message_id}"},
        "session": None,
        "program": None,
        "deadline": None,
        "priority": 0,
        "reply_to": None,
        "correlation_id": message_id,
        "state": "accepted",
        "accepted_at": utcnow(),
    }
    record.update(changes)
    return record


def test_a_record_recovery_cannot_finish_does_not_block_the_others(
    world: World, make_scheduler: Callable[..., SchedulerProcess]
) -> None:
    db = world.db()
    bad_args = _record("bad-args", args={"content": ""})  # stored by an older version, refused by today's model
    unreadable = {k: v for k, v in _record("unreadable").items() if k != "agent"}
    db.syscalls.insert_many([_record("first"), bad_args, unreadable, _record("last")])

    scheduler = make_scheduler().start()
    deadline = time.monotonic() + 30
    while db.results.count_documents({}) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    results = {r["id"]: r["reply"] for r in db.results.find({})}
    assert results["first"]["status"] == results["last"]["status"] == "ok"
    assert (results["bad-args"]["status"], results["bad-args"]["error"]["code"]) == ("error", "internal")
    assert db.memory.count_documents({}) == 2
    assert db.syscalls.find_one({"_id": "guest/unreadable"})["state"] == "unrecoverable"  # type: ignore[index]
    assert any(e["event"] == "recovery_failed" for e in scheduler.events())


def test_memory_quota_counts_are_recounted_for_agents_with_memory_calls_in_flight(
    world: World, make_scheduler: Callable[..., SchedulerProcess]
) -> None:
    from aiosd.sdk.protocol import utcnow as now

    db = world.db()
    db.memory.insert_many([
        {"_id": f"n{i}", "agent": "guest", "content": "abc", "tags": [], "metadata": {}, "deleted": False,
         "created_at": now(), "updated_at": now()}
        for i in range(3)
    ])  # fmt: skip
    # A crash between reserving quota and storing the note left the count one note high.
    db.counters.insert_one({"_id": "guest:memory", "agent": "guest", "kind": "memory", "notes": 4, "bytes": 12})
    db.syscalls.insert_one(_record("in-flight"))  # the memory.add that was running
    scheduler = make_scheduler().start()
    deadline = time.monotonic() + 30
    while db.results.count_documents({"id": "in-flight"}) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    counter = db.counters.find_one({"_id": "guest:memory"})
    assert counter is not None and (counter["notes"], counter["bytes"]) == (4, 3 * 3 + len("recovered in-flight"))
    assert next(e for e in scheduler.events() if e["event"] == "scheduler_ready")["quotas_recounted"] == 1


def test_a_memory_write_redelivered_after_a_crash_recounts_its_agents_quota(
    world: World, make_scheduler: Callable[..., SchedulerProcess]
) -> None:
    """Kernel calls have no live record: the redelivered message is what tells of the crash."""
    db = world.db()
    first = make_scheduler().start()  # declares the queues
    first.stop()
    agent = RawAgent(world.amqp_url())
    try:
        call_id = agent.publish(json.dumps({"v": 1, "syscall": "memory.add", "args": {"content": "again"}}).encode())
        # A scheduler took the message and died before acknowledging it: RabbitMQ delivers it again, flagged.
        taker = pika.BlockingConnection(pika.URLParameters(world.amqp_url()))
        method, _props, _body = taker.channel().basic_get(INGRESS_QUEUE, auto_ack=False)
        assert method is not None
        taker.close()
        # ... having reserved the note's quota, not stored the note: one note counted high.
        db.counters.insert_one({"_id": "guest:memory", "agent": "guest", "kind": "memory", "notes": 1, "bytes": 5})
        make_scheduler().start()
        reply = agent.wait(call_id)
    finally:
        agent.close()
    assert reply["status"] == "ok"
    counter = db.counters.find_one({"_id": "guest:memory"})
    assert counter is not None and (counter["notes"], counter["bytes"]) == (1, len("again"))
    assert db.memory.count_documents({"agent": "guest", "deleted": False}) == 1
