"""Protocol edges, decided and documented in docs/protocol.md: each answered with its code."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import pika
import pytest

from .harness import SchedulerProcess, World
from .rawamqp import RawAgent
from .scripted_worker import ScriptedWorker, chat_args

ADD = json.dumps({"syscall": "memory.add", "args": {"content": "edge"}}).encode()


@pytest.fixture
def agent(world: World, make_scheduler: Callable[..., SchedulerProcess]) -> Iterator[RawAgent]:
    make_scheduler().start()
    a = RawAgent(world.amqp_url())
    yield a
    a.close()


def _publish(agent: RawAgent, body: bytes, routing_key: str = "memory.add", **props: object) -> str:
    call_id = str(uuid.uuid4())
    fields: dict[str, object] = {
        "message_id": call_id, "correlation_id": call_id, "reply_to": agent.reply_queue, "user_id": agent.user,
        "content_type": "application/json", "headers": {"aiosd-protocol": 1},
    }  # fmt: skip
    fields.update(props)
    agent.ch.basic_publish("aiosd.ingress", routing_key, body, pika.BasicProperties(**fields))
    return call_id


@pytest.mark.parametrize(
    ("routing_key", "props", "code", "says"),
    [
        pytest.param("storage.write", {}, "invalid_request", "does not match", id="routing-key-mismatch"),
        pytest.param(
            "memory.add", {"content_type": "text/plain"}, "invalid_request", "content_type", id="content-type"
        ),
        pytest.param("memory.add", {"content_encoding": "gzip"}, "invalid_request", "utf-8", id="content-encoding"),
        pytest.param("memory.add", {"headers": {"aiosd-protocol": 2}}, "unsupported_version", "2", id="version-header"),
    ],
)
def test_envelope_edges_are_refused_with_their_code(
    agent: RawAgent, routing_key: str, props: dict[str, object], code: str, says: str
) -> None:
    reply = agent.wait(_publish(agent, ADD, routing_key, **props))
    assert (reply["status"], reply["error"]["code"]) == ("error", code) and says in reply["error"]["message"]


def test_charset_parameters_and_a_missing_version_header_are_fine(agent: RawAgent) -> None:
    reply = agent.wait(_publish(agent, ADD, content_type="application/json; charset=utf-8", headers=None))
    assert reply["status"] == "ok"


def test_a_message_without_message_id_is_answered_under_its_correlation_id(agent: RawAgent) -> None:
    _publish(agent, ADD, message_id=None, correlation_id="corr-1")
    reply = agent.wait("corr-1")
    assert (reply["id"], reply["error"]["code"]) == ("corr-1", "invalid_request")


def test_a_duplicate_of_a_running_call_gets_the_reply_when_the_call_finishes(
    world: World, make_scheduler: Callable[..., SchedulerProcess]
) -> None:
    make_scheduler().start()
    worker = ScriptedWorker(world.amqp_url(), f"w-{uuid.uuid4().hex[:6]}", capacity=2).start()
    first, again = RawAgent(world.amqp_url()), RawAgent(world.amqp_url())  # two connections, two reply queues
    try:
        body = json.dumps({"syscall": "llm.chat", "args": chat_args(model="scripted-model")}).encode()
        first.publish(body, routing_key="llm.chat", message_id="still-running")
        lease = worker.next_lease()
        again.publish(body, routing_key="llm.chat", message_id="still-running")  # while the first one runs
        worker.finish(lease)
        one, two = first.wait("still-running"), again.wait("still-running")
        assert one["status"] == two["status"] == "ok" and one["result"] == two["result"]
        assert world.db().results.count_documents({"id": "still-running"}) == 1
    finally:
        first.close()
        again.close()
        worker.stop()


def test_two_copies_of_one_call_in_one_batch_run_it_once_and_both_are_answered(
    world: World, make_scheduler: Callable[..., SchedulerProcess]
) -> None:
    # A call goes on at once and the copies (as a client's reconnect may publish them), arriving while its
    # batch is served, gather behind it into one batch (the long batch wait keeps them gathering).
    make_scheduler(batch_wait_ms="300").start()
    first, again = RawAgent(world.amqp_url()), RawAgent(world.amqp_url())
    try:
        body = json.dumps({"syscall": "memory.add", "args": {"content": "copied"}}).encode()
        first.publish(json.dumps({"syscall": "memory.add", "args": {"content": "lead"}}).encode(), message_id="lead")
        first.publish(body, message_id="twice-in-a-batch")
        again.publish(body, message_id="twice-in-a-batch")
        one, two = first.wait("twice-in-a-batch", timeout=15), again.wait("twice-in-a-batch", timeout=15)
        assert one["status"] == two["status"] == "ok" and one["result"] == two["result"]
        assert world.db().memory.count_documents({"content": "copied"}) == 1
    finally:
        first.close()
        again.close()
