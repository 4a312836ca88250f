"""Property-based fuzzing of intake: whatever a registered agent sends, the kernel stays up and correct.

Hostile messages (bodies, every AMQP property, header tables, nesting, sizes,
encodings) are published as an agent made by ``aiosd agents add``, each
followed by a valid call of another agent. Every valid call must be answered
correctly exactly once; every bad message is answered with a documented code
(on its own reply queue) or dead-lettered with its reason; the scheduler
keeps its connection; nothing is left unacknowledged; the audit chain
verifies. Bounded in time: ``AIOSD_FUZZ_EXAMPLES`` (default 40) hostile
messages; set it higher for a long run.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiosd.sdk.protocol import ErrorCode

from .harness import AgentRegistry, SchedulerProcess, World, aiosd_cli, management
from .rawamqp import RawAgent

EXAMPLES = int(os.environ.get("AIOSD_FUZZ_EXAMPLES", "40"))
DOCUMENTED = {code.value for code in ErrorCode}
SYSCALLS = ["memory.add", "memory.get", "memory.search", "storage.write", "context.create", "tool.list", "no.such"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
header_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**31), 2**31 - 1), st.text(max_size=20), st.binary(max_size=20)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3),
    max_leaves=12,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "request", "deep"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "deep":
        depth = draw(st.integers(20, 400))
        return b'{"syscall": "memory.add", "args": {"content": "x", "metadata": ' + b"[" * depth + b"]" * depth + b"}}"
    request = {
        "syscall": draw(st.sampled_from(SYSCALLS)),
        "args": draw(st.dictionaries(st.text(max_size=10), json_values)),
    }
    if draw(st.booleans()):
        request["v"] = draw(st.sampled_from([1, 2, "1", None]))
    if draw(st.booleans()):
        request["deadline"] = draw(st.sampled_from(["2030-01-01T00:00:00Z", "2030-01-01T00:00:00", "yesterday", 5]))
    return json.dumps(request).encode()


@st.composite
def hostile_messages(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "body": draw(bodies()),
        "routing_key": draw(st.sampled_from([*SYSCALLS, "", "#", "x" * 200])),
        "message_id": draw(st.one_of(st.none(), st.text(max_size=140), st.just("a/b"))),
        "priority": draw(st.one_of(st.none(), st.integers(0, 255))),
        "content_type": draw(st.sampled_from([None, "application/json", "text/plain", "application/json; x=1"])),
        "content_encoding": draw(st.sampled_from([None, "utf-8", "gzip"])),
        "headers": draw(
            st.one_of(st.none(), st.dictionaries(st.text(min_size=1, max_size=12), header_values, max_size=4))
        ),
        "identity": draw(st.booleans()),
        "reply": draw(st.booleans()),
    }


@pytest.fixture(scope="module")
def actors(
    shared_world: World, scheduler: SchedulerProcess, registry: AgentRegistry
) -> Iterator[tuple[RawAgent, RawAgent]]:
    hostile = RawAgent(registry.add("fuzzer"), user=registry.name("fuzzer"))
    bystander = RawAgent(registry.add("honest"), user=registry.name("honest"))
    yield hostile, bystander
    hostile.close()
    bystander.close()


def _publish(agent: RawAgent, msg: dict[str, Any]) -> str:
    correlation = uuid.uuid4().hex
    props = pika.BasicProperties(
        message_id=msg["message_id"],
        correlation_id=correlation,
        reply_to=agent.reply_queue if msg["reply"] else None,
        user_id=agent.user if msg["identity"] else None,
        priority=msg["priority"],
        content_type=msg["content_type"],
        content_encoding=msg["content_encoding"],
        headers=msg["headers"],
    )
    agent.ch.basic_publish("aiosd.ingress", msg["routing_key"], msg["body"], props)
    return correlation


def _replies(agent: RawAgent, wait: float) -> list[tuple[str, dict[str, Any]]]:
    got: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        method, props, body = agent.ch.basic_get(agent.reply_queue, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        got.append((str(props.correlation_id), json.loads(body)))
    return got


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(msg=hostile_messages())
def test_hostile_messages_never_disturb_the_kernel(
    actors: tuple[RawAgent, RawAgent], scheduler: SchedulerProcess, msg: dict[str, Any]
) -> None:
    hostile, bystander = actors
    correlation = _publish(hostile, msg)
    body = json.dumps({"syscall": "memory.add", "args": {"content": f"honest {uuid.uuid4().hex}"}}).encode()
    honest = bystander.wait(bystander.publish(body), timeout=15)
    assert honest["status"] == "ok", honest
    answers = [r for c, r in _replies(hostile, 0.3) if c == correlation]
    assert len(answers) <= 1, answers  # at most one reply per message
    for reply in answers:
        assert reply["status"] == "ok" or reply["error"]["code"] in DOCUMENTED, reply
    assert not msg["identity"] or msg["reply"] or not answers
    assert scheduler.proc is not None and scheduler.proc.poll() is None


def test_after_the_fuzz_nothing_is_lost_or_left_hanging(
    shared_world: World, scheduler: SchedulerProcess, actors: tuple[RawAgent, RawAgent]
) -> None:
    events = [e["event"] for e in scheduler.events()]
    assert "broker_connection_lost" not in events and "dead_letter_publish_failed" not in events
    with management() as api:
        queue = api.get(f"/queues/{quote(shared_world.vhost, safe='')}/aiosd.syscalls").json()
        deadline = time.monotonic() + 15
        while queue.get("messages_unacknowledged", 0) and time.monotonic() < deadline:
            time.sleep(0.5)
            queue = api.get(f"/queues/{quote(shared_world.vhost, safe='')}/aiosd.syscalls").json()
    assert queue.get("messages_unacknowledged", 0) == 0
    conn = shared_world.pika()
    ch = conn.channel()
    try:
        while True:
            method, props, _body = ch.basic_get("aiosd.dead", auto_ack=True)
            if method is None:
                break
            headers = props.headers or {}
            assert headers.get("x-aiosd-error-code") in DOCUMENTED and headers.get("x-aiosd-error-reason"), headers
    finally:
        conn.close()
    verified = aiosd_cli(shared_world, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
