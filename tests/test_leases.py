"""Leases, expiry, late results, admission, priority, affinity and slicing, with scripted workers.

The workers here speak the real cluster protocol over the real broker, and the
scheduler is the real process; only the model is replaced by the test's script,
so that timing (who holds what, when) is exact.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from aiosd.sdk import Client, Reply

from .harness import HOST, MONGO_PORT, World, lifetime_usage
from .rawamqp import RawAgent
from .scripted_worker import ScriptedWorker, chat_args, wait_until
from .tcpproxy import TcpProxy


@pytest.fixture
def workers(world: World) -> Iterator[list[ScriptedWorker]]:
    started: list[ScriptedWorker] = []
    yield started
    for w in started:
        w.stop()


def spawn(world: World, workers: list[ScriptedWorker], name: str, capacity: int = 1, **kw: Any) -> ScriptedWorker:
    w = ScriptedWorker(world.amqp_url(), name, capacity=capacity, **kw).start()
    workers.append(w)
    return w


def ask(pool: ThreadPoolExecutor, client: Client, **kw: Any) -> Future[Reply]:
    args = kw.pop("args", None) or chat_args()
    return pool.submit(client.request, "llm.chat", args, timeout=60, **kw)


def test_llm_call_through_a_worker(world: World, make_scheduler: Any, workers: list[ScriptedWorker]) -> None:
    make_scheduler().start()
    w = spawn(world, workers, "w1")
    with Client(world.amqp_url()) as client, ThreadPoolExecutor(2) as pool:
        fut = ask(pool, client)
        lease = w.next_lease()
        assert lease.args["messages"][0]["content"] == "hello" and lease.attempt == 1 and lease.slice_tokens is None
        w.finish(lease, text="hi there")
        reply = fut.result(30)
    assert reply.status.value == "ok"
    assert reply.result["text"] == "hi there" and reply.result["worker"] == "w1" and reply.result["slices"] == 1
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (5, 3)
    usage = lifetime_usage(world.db(), "guest")
    assert usage is not None and usage["prompt_tokens"] == 5 and usage["llm_calls"] == 1
    assert world.db().workers.find_one({"_id": "w1"})["capacity"] == 1


def test_late_result_after_reassignment_is_dropped(
    world: World, make_scheduler: Any, workers: list[ScriptedWorker]
) -> None:
    sched = make_scheduler(lease_ttl="1.5").start()
    a = spawn(world, workers, "wa")
    agent = RawAgent(world.amqp_url())
    try:
        call_id = agent.publish(
            json.dumps({"syscall": "llm.chat", "args": chat_args()}).encode(), routing_key="llm.chat"
        )
        first = a.next_lease()
        a.silent.add(first.lease_id)  # never reported in heartbeats: the lease expires
        second = a.next_lease(timeout=15)
        assert second.key == first.key and second.lease_id != first.lease_id and second.attempt == 2
        a.finish(second, text="from the current lease")
        reply = agent.wait(call_id)
        a.finish(first, text="too late")  # the expired lease reports after all
        sched.wait_for("stale_outcome_dropped")
        with pytest.raises(AssertionError):
            agent.wait(call_id, timeout=2)  # no second reply
    finally:
        agent.close()
    assert reply["status"] == "ok" and reply["result"]["text"] == "from the current lease"
    results = list(world.db().results.find({"id": call_id}))
    assert len(results) == 1 and results[0]["reply"]["result"]["text"] == "from the current lease"


def test_attempt_limit_fails_clearly(world: World, make_scheduler: Any, workers: list[ScriptedWorker]) -> None:
    make_scheduler(lease_ttl="1", max_attempts="2").start()
    w = spawn(world, workers, "w1")
    with Client(world.amqp_url()) as client, ThreadPoolExecutor(1) as pool:
        fut = ask(pool, client)
        for _ in range(2):
            w.silent.add(w.next_lease().lease_id)
        reply = fut.result(30)
    assert reply.status.value == "error" and reply.error is not None
    assert reply.error.code.value == "unavailable" and "2 attempts" in reply.error.message


def test_dead_worker_leases_requeued_at_once(world: World, make_scheduler: Any, workers: list[ScriptedWorker]) -> None:
    make_scheduler(lease_ttl="60", worker_timeout="1.5").start()
    a = spawn(world, workers, "wa")
    with Client(world.amqp_url()) as client, ThreadPoolExecutor(1) as pool:
        fut = ask(pool, client)
        lease = a.next_lease()
        a.beating = False  # the worker "dies": no more heartbeats
        b = spawn(world, workers, "wb")
        again = b.next_lease(timeout=15)  # long before the 60 s lease expiry
        assert again.key == lease.key
        b.finish(again, text="rescued")
        assert fut.result(30).result["text"] == "rescued"


def test_admission_never_exceeds_capacity(world: World, make_scheduler: Any, workers: list[ScriptedWorker]) -> None:
    make_scheduler().start()
    w = spawn(world, workers, "w1", capacity=2)
    with Client(world.amqp_url()) as client, ThreadPoolExecutor(6) as pool:
        futs = [ask(pool, client) for _ in range(5)]
        held = [w.next_lease(), w.next_lease()]
        assert w.no_lease(2.0), "a third lease was sent to a worker of capacity 2"
        assert world.queue_depth("aiosd.syscalls") == 0  # the backlog waits in MongoDB, acked
        wait_until(lambda: world.db().syscalls.count_documents({"state": "queued"}) == 3)
        w.finish(held[0])
        held.append(w.next_lease())
        assert w.no_lease(1.0)
        for lease in held[1:]:
            w.finish(lease)
        for _ in range(2):
            w.finish(w.next_lease())
        assert all(f.result(30).status.value == "ok" for f in futs)


def test_priority_overtakes_queued_calls(world: World, make_scheduler: Any, workers: list[ScriptedWorker]) -> None:
    make_scheduler(policy="priority").start()
    w = spawn(world, workers, "w1")
    with Client(world.amqp_url()) as client, ThreadPoolExecutor(8) as pool:
        busy = ask(pool, client)
        first = w.next_lease()
        low = [ask(pool, client, args=chat_args("low"), priority=0) for _ in range(4)]
        wait_until(lambda: world.db().syscalls.count_documents({"state": "queued"}) == 4)
        high = ask(pool, client, args=chat_args("urgent"), priority=9)
        wait_until(lambda: world.db().syscalls.count_documents({"state": "queued"}) == 5)
        w.finish(first)
        nxt = w.next_lease()
        assert nxt.args["messages"][0]["content"] == "urgent"
        w.finish(nxt)
        for _ in low:
            w.finish(w.next_lease())
        assert busy.result(30).status.value == high.result(30).status.value == "ok"
        assert all(f.result(30).status.value == "ok" for f in low)


def test_session_affinity_while_balanced(world: World, make_scheduler: Any, workers: list[ScriptedWorker]) -> None:
    make_scheduler().start()
    a, b = spawn(world, workers, "wa", capacity=4), spawn(world, workers, "wb", capacity=4)
    by_worker = {"wa": a, "wb": b}
    placed: dict[str, list[str]] = {"s1": [], "s2": []}
    with Client(world.amqp_url()) as client, ThreadPoolExecutor(2) as pool:
        for _round in range(3):
            for session in ("s1", "s2"):
                fut = ask(pool, client, session=session)
                got = wait_until(lambda: next(((wid, w) for wid, w in by_worker.items() if not w.leases.empty()), None))
                wid, worker = got
                worker.finish(worker.next_lease())
                placed[session].append(wid)
                assert fut.result(30).status.value == "ok"
    assert len(set(placed["s1"])) == 1 and len(set(placed["s2"])) == 1, placed


def test_round_robin_slices_resume_from_snapshot(
    world: World, make_scheduler: Any, workers: list[ScriptedWorker]
) -> None:
    from aiosd.sdk.cluster import Snapshot

    make_scheduler(policy="round_robin", slice_tokens="4").start()
    w = spawn(world, workers, "w1")
    with Client(world.amqp_url()) as client, ThreadPoolExecutor(2) as pool:
        fut = ask(pool, client)
        one = w.next_lease()
        assert one.slice_tokens == 4 and one.resume is None
        w.finish(one, status="slice", snapshot=Snapshot(token_ids=[1, 2, 3, 4], text="abcd"))
        two = w.next_lease()
        assert two.resume == Snapshot(token_ids=[1, 2, 3, 4], text="abcd") and two.attempt == 2
        w.finish(two, text="abcdef")
        reply = fut.result(30)
    assert reply.result["text"] == "abcdef" and reply.result["slices"] == 2
    assert reply.usage.prompt_tokens == 10  # both slices counted


def test_unknown_model_fails_clearly(world: World, make_scheduler: Any, workers: list[ScriptedWorker]) -> None:
    make_scheduler().start()
    spawn(world, workers, "w1")
    with Client(world.amqp_url()) as client:
        reply = client.request("llm.chat", chat_args(model="no-such-model"), timeout=30)
    assert reply.status.value == "error" and reply.error is not None
    assert reply.error.code.value == "invalid_args" and "scripted-model" in reply.error.message


def test_answers_kept_through_a_store_outage(world: World, make_scheduler: Any, workers: list[ScriptedWorker]) -> None:
    """Answers (and failures) arriving while the store is away are committed once it is back, each exactly once.

    The calls leave the lease book when their answers settle, before the
    replies are committed: without a retry of that commit nothing would answer
    them (their redelivered answers find no lease) until a restart. Heartbeats
    (which write the worker's document, and fail too) arrive between them.
    """
    with TcpProxy(HOST, MONGO_PORT) as proxy:
        sched = make_scheduler(mongo_url=proxy.url()).start()
        w = spawn(world, workers, "w1", capacity=2)
        with Client(world.amqp_url()) as client, ThreadPoolExecutor(2) as pool:
            answered = ask(pool, client, session="outage")
            first = w.next_lease()
            failed = ask(pool, client)
            second = w.next_lease()
            proxy.cut()
            w.finish(first, text="kept through the outage")
            w.heartbeat()
            w.finish(second, status="error", error_code="invalid_args", error_message="refused", retryable=False)
            w.heartbeat()
            sched.wait_for("replies_parked", timeout=30)
            assert not answered.done() and not failed.done()
            proxy.mend()
            reply, failure = answered.result(30), failed.result(30)
            sched.wait_for("parked_replies_committed", timeout=10)
    assert reply.status.value == "ok" and reply.result["text"] == "kept through the outage"
    assert failure.status.value == "error" and failure.error is not None
    assert (failure.error.code.value, failure.error.message) == ("invalid_args", "refused")
    db = world.db()
    for call in (reply, failure):
        assert db["results"].count_documents({"id": call.id}) == 1
        ends = db["audit"].count_documents({"message_id": call.id, "decision": {"$in": ["completed", "failed"]}})
        assert ends == 1, call.id
    session = db["sessions"].find_one({"_id": "guest/outage"})
    assert session is not None and [m["role"] for m in session["messages"]] == ["user", "assistant"]
    usage = lifetime_usage(db, "guest")
    time.sleep(1.0)  # totals are written every 0.2 s: a second count would show by now
    again = db["usage"].find_one({"_id": "guest"})
    for doc in (usage, again):
        assert doc is not None and (doc["llm_calls"], doc["prompt_tokens"]) == (1, 5)
