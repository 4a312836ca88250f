"""A registered agent's bad messages cost it an error, never the scheduler its connection.

These publish as a broker identity made by ``aiosd agents add``, not as the
broker's admin user: the scheduler must handle what any agent can send.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pika
import pytest

from .harness import AgentRegistry, SchedulerProcess, World
from .rawamqp import RawAgent
from .test_bad_input import dead_letter


@pytest.fixture(scope="module")
def hostile(registry: AgentRegistry) -> Iterator[RawAgent]:
    agent = RawAgent(registry.add("hostile"), user=registry.name("hostile"))
    yield agent
    agent.close()


@pytest.fixture(scope="module")
def bystander(registry: AgentRegistry) -> Iterator[RawAgent]:
    agent = RawAgent(registry.add("bystander"), user=registry.name("bystander"))
    yield agent
    agent.close()


def test_a_bad_message_is_dead_lettered_with_its_reason_and_the_connection_stays(
    shared_world: World, scheduler: SchedulerProcess, hostile: RawAgent, bystander: RawAgent, registry: AgentRegistry
) -> None:
    for n in range(3):
        call_id = hostile.publish(b"{not json", routing_key="memory.add", message_id=f"bad-{n}")
        reply = hostile.wait(call_id)
        assert (reply["status"], reply["error"]["code"]) == ("error", "malformed")
        props, body = dead_letter(shared_world, call_id)
        headers = props.headers or {}
        assert headers["x-aiosd-error-code"] == "malformed" and "JSON" in headers["x-aiosd-error-reason"]
        assert headers["x-aiosd-agent"] == registry.name("hostile") and body == b"{not json"
        started = time.monotonic()
        ok = bystander.call("memory.add", {"content": f"still served {n}"})
        assert ok["status"] == "ok" and time.monotonic() - started < 5.0
    events = [e["event"] for e in scheduler.events()]
    assert "broker_connection_lost" not in events and "dead_letter_publish_failed" not in events


def test_no_reply_goes_to_another_agents_queue_for_a_caller_without_identity(
    shared_world: World, scheduler: SchedulerProcess, bystander: RawAgent
) -> None:
    # Only the broker's own users can publish without user_id; the scheduler still
    # must not write into a queue the (unknown) sender named: it is not the caller's.
    intruder = RawAgent(shared_world.amqp_url())
    try:
        intruder.reply_queue = bystander.reply_queue
        call_id = intruder.publish(b'{"syscall": "memory.add", "args": {"content": "x"}}', user_id=None)
        props, _ = dead_letter(shared_world, call_id)
        assert (props.headers or {})["x-aiosd-error-code"] == "unauthenticated"
    finally:
        intruder.close()
    method, _props, _body = bystander.ch.basic_get(bystander.reply_queue, auto_ack=True)
    assert method is None, "the scheduler wrote into another agent's reply queue"


UNSTORABLE = [
    pytest.param(b'{"syscall": "memory.add", "args": {"content": "x", "metadata": {"a": NaN}}}', "NaN", id="nan"),
    pytest.param(b'{"syscall": "memory.add", "args": {"content": "x", "metadata": {"a": 1e999}}}', "float", id="inf"),
    pytest.param(
        b'{"syscall": "memory.add", "args": {"content": "x", "metadata": {"n": 1180591620717411303424}}}',
        "64 bits",
        id="int-beyond-64-bits",
    ),
    pytest.param(
        b'{"syscall": "memory.add", "args": {"content": "x", "metadata": '
        + b'{"a": ' * 300
        + b"1"
        + b"}" * 300
        + b"}}",
        "deeper",
        id="deep-metadata",
    ),
    pytest.param(b'{"syscall": "memory.add", "args": ' + b"[" * 5000 + b"]" * 5000 + b"}", "deeper", id="deep-array"),
]


@pytest.mark.parametrize(("body", "says"), UNSTORABLE)
def test_what_cannot_be_stored_and_read_back_is_malformed(
    shared_world: World, scheduler: SchedulerProcess, hostile: RawAgent, bystander: RawAgent, body: bytes, says: str
) -> None:
    call_id = hostile.publish(body)
    reply = hostile.wait(call_id)
    assert (reply["status"], reply["error"]["code"]) == ("error", "malformed") and says in reply["error"]["message"]
    props, _ = dead_letter(shared_world, call_id)
    assert (props.headers or {})["x-aiosd-error-code"] == "malformed"
    assert bystander.call("memory.add", {"content": "served as ever"})["status"] == "ok"
    assert shared_world.db().memory.count_documents({"content": "x"}) == 0


def test_a_deadline_without_a_time_zone_is_answered_at_once(hostile: RawAgent, scheduler: SchedulerProcess) -> None:
    body = b'{"syscall": "memory.add", "args": {"content": "y"}, "deadline": "2030-01-01T00:00:00"}'
    started = time.monotonic()
    reply = hostile.wait(hostile.publish(body), timeout=10)
    assert (reply["status"], reply["error"]["code"]) == ("error", "invalid_request")
    assert "time zone" in reply["error"]["message"] and time.monotonic() - started < 5.0


def _nested(depth: int) -> dict[str, object]:
    table: dict[str, object] = {"end": 1}
    for _ in range(depth):
        table = {"t": table}
    return table


def test_a_header_table_pika_cannot_decode_is_dead_lettered_and_the_scheduler_stays_up(
    shared_world: World, scheduler: SchedulerProcess, hostile: RawAgent, bystander: RawAgent
) -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # encoding the table takes a deep stack here; decoding it must not break there
    try:
        props = pika.BasicProperties(
            message_id="poison-header",
            user_id=hostile.user,
            reply_to=hostile.reply_queue,
            content_type="application/json",
            headers={"deep": _nested(1500)},
        )
        hostile.ch.basic_publish("aiosd.ingress", "memory.add", b'{"syscall": "memory.add", "args": {}}', props)
    finally:
        sys.setrecursionlimit(limit)
    dead, _ = dead_letter(
        shared_world, None, match=lambda props: "x-aiosd-undecodable-properties" in (props.headers or {})
    )
    assert (dead.headers or {})["x-aiosd-error-code"] == "malformed"
    assert "could not be decoded" in (dead.headers or {})["x-aiosd-error-reason"]
    assert bystander.call("memory.add", {"content": "after the poison header"})["status"] == "ok"
    assert scheduler.proc.poll() is None  # still running
    assert "broker_connection_lost" not in [e["event"] for e in scheduler.events()]


def test_a_message_id_that_is_not_utf8_is_malformed_and_audited(
    shared_world: World, scheduler: SchedulerProcess, hostile: RawAgent
) -> None:
    props = pika.BasicProperties(message_id=b"\xff\xfe-not-text", user_id=hostile.user, content_type="application/json")
    hostile.ch.basic_publish(
        "aiosd.ingress", "memory.add", b'{"syscall": "memory.add", "args": {"content": "z"}}', props
    )
    dead, _ = dead_letter(
        shared_world, None, match=lambda p: "not UTF-8" in str((p.headers or {}).get("x-aiosd-error-reason"))
    )
    assert (dead.headers or {})["x-aiosd-error-code"] == "malformed"
    deadline = time.monotonic() + 10
    while not shared_world.db().audit.find_one({"code": "malformed", "reason": {"$regex": "not UTF-8"}}):
        assert time.monotonic() < deadline, "the refusal was not audited"
        time.sleep(0.1)
