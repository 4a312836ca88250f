"""Bad input gets an error reply, a dead letter with its reason and an audit record; serving goes on."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest

from .harness import SchedulerProcess, World
from .rawamqp import RawAgent

ONE_MIB = 1024 * 1024


@pytest.fixture
def agent(shared_world: World, scheduler: SchedulerProcess) -> Iterator[RawAgent]:
    a = RawAgent(shared_world.amqp_url())
    yield a
    a.close()


def dead_letter(
    world: World,
    message_id: str | None,
    timeout: float = 15.0,
    match: Callable[[pika.BasicProperties], bool] | None = None,
) -> tuple[pika.BasicProperties, bytes]:
    """Take the dead-lettered copy of ``message_id`` (or the first that ``match``es) off ``aiosd.dead``."""
    wanted = match or (lambda props: props.message_id == message_id)
    conn = world.pika()
    ch = conn.channel()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            # Others stay unacked (out of the way) until the channel closes, then return to the queue.
            method, props, body = ch.basic_get("aiosd.dead", auto_ack=False)
            if method is None:
                time.sleep(0.1)
            elif wanted(props):
                ch.basic_ack(method.delivery_tag)
                return props, body
    finally:
        conn.close()
    raise AssertionError(f"{message_id or 'the expected message'} was not dead-lettered")


def audit_of(world: World, message_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = world.db().audit.find_one({"message_id": message_id})
        if rec is not None:
            return rec
        time.sleep(0.1)
    raise AssertionError(f"no audit record for {message_id}")


CASES = [
    pytest.param(b"{this is not json", "memory.add", "malformed", "JSON", id="malformed-json"),
    pytest.param(b"\xff\xfe not utf-8", "memory.add", "malformed", "UTF-8", id="not-utf8"),
    pytest.param(b"[1, 2, 3]", "memory.add", "malformed", "object", id="not-an-object"),
    pytest.param(
        json.dumps({"syscall": "memory.fly", "args": {}}).encode(),
        "memory.fly",
        "unknown_syscall",
        "memory.fly",
        id="unknown-syscall",
    ),
    pytest.param(
        json.dumps({"args": {"content": "x"}}).encode(),
        "memory.add",
        "invalid_request",
        "syscall",
        id="missing-syscall",
    ),
    pytest.param(
        json.dumps({"syscall": "memory.add", "args": {}}).encode(),
        "memory.add",
        "invalid_args",
        "content",
        id="missing-arg",
    ),
    pytest.param(
        json.dumps({"syscall": "memory.add", "args": {"content": 5}}).encode(),
        "memory.add",
        "invalid_args",
        "content",
        id="wrong-type",
    ),
    pytest.param(
        json.dumps({"syscall": "memory.add", "extra": 1}).encode(),
        "memory.add",
        "invalid_request",
        "extra",
        id="unknown-field",
    ),
    pytest.param(
        json.dumps({"v": 2, "syscall": "memory.add"}).encode(),
        "memory.add",
        "unsupported_version",
        "version",
        id="future-version",
    ),
    pytest.param(
        b'{"syscall": "memory.add", "args": {"content": "' + b"x" * (ONE_MIB + 10) + b'"}}',
        "memory.add",
        "too_large",
        "limit",
        id="oversize",
    ),
    pytest.param(
        json.dumps({"syscall": "memory.add", "args": {"content": "x", "metadata": {"a.b": 1}}}).encode(),
        "memory.add",
        "invalid_args",
        "a.b",
        id="dotted-key",
    ),
    pytest.param(
        json.dumps({"syscall": "memory.add", "args": {"content": "x", "metadata": {"k": [{"$where": 1}]}}}).encode(),
        "memory.add",
        "invalid_args",
        "$where",
        id="dollar-key",
    ),
    pytest.param(
        json.dumps({"syscall": "memory.add", "args": {"content": "x", "metadata": {"a\u0000b": 1}}}).encode(),
        "memory.add",
        "invalid_args",
        "NUL",
        id="nul-key",
    ),
]


@pytest.mark.parametrize(("body", "routing_key", "code", "reason_part"), CASES)
def test_refused_with_reply_dead_letter_and_audit(
    shared_world: World, agent: RawAgent, body: bytes, routing_key: str, code: str, reason_part: str
) -> None:
    call_id = agent.publish(body, routing_key=routing_key)
    reply = agent.wait(call_id)
    assert reply["status"] == "error" and reply["result"] is None
    assert reply["error"]["code"] == code
    assert reason_part in reply["error"]["message"]

    props, dead_body = dead_letter(shared_world, call_id)
    assert props.headers["x-aiosd-error-code"] == code
    assert reason_part in props.headers["x-aiosd-error-reason"]
    assert dead_body == body  # the original message, unchanged

    record = audit_of(shared_world, call_id)
    assert (record["decision"], record["code"], record["agent"]) == ("rejected", code, "guest")
    db = shared_world.db()
    assert db.syscalls.count_documents({"id": call_id}) + db.results.count_documents({"id": call_id}) == 0


def test_missing_user_id_is_unauthenticated(shared_world: World, agent: RawAgent) -> None:
    body = json.dumps({"syscall": "memory.add", "args": {"content": "who am i"}}).encode()
    call_id = agent.publish(body, user_id=None)
    props, _ = dead_letter(shared_world, call_id)
    assert props.headers["x-aiosd-error-code"] == "unauthenticated"
    assert audit_of(shared_world, call_id)["decision"] == "denied"
    # Not answered: whose queue reply_to names cannot be checked without an identity.
    method, _props, _body = agent.ch.basic_get(agent.reply_queue, auto_ack=True)
    assert method is None


def test_missing_message_id_without_reply_is_dead_lettered(shared_world: World, agent: RawAgent) -> None:
    ch = agent.ch
    props = pika.BasicProperties(user_id="guest", content_type="application/json", correlation_id="no-id-1")
    ch.basic_publish(
        "aiosd.ingress", "memory.add", json.dumps({"syscall": "memory.add", "args": {"content": "x"}}).encode(), props
    )
    conn = shared_world.pika()
    dch = conn.channel()
    try:
        for _ in range(150):
            method, dprops, _body = dch.basic_get("aiosd.dead", auto_ack=False)
            if method is not None and dprops.correlation_id == "no-id-1":
                dch.basic_ack(method.delivery_tag)
                assert dprops.headers["x-aiosd-error-code"] == "invalid_request"
                assert "message_id" in dprops.headers["x-aiosd-error-reason"]
                break
            if method is not None:
                dch.basic_nack(method.delivery_tag, requeue=True)
            time.sleep(0.1)
        else:
            raise AssertionError("message without message_id was not dead-lettered")
    finally:
        conn.close()


def test_still_serving_after_bad_input(scheduler: SchedulerProcess, agent: RawAgent) -> None:
    for junk in (b"", b"null", b"{", b'{"syscall": 1}'):
        agent.publish(junk, reply=False)
    reply = agent.call("memory.add", {"content": "still here"})
    assert reply["status"] == "ok"
    assert scheduler.proc is not None and scheduler.proc.poll() is None
