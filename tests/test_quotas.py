"""Quotas, rate limits, priority clamping, allowed syscalls and models, concurrent LLM caps."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pymongo
import pytest

from aiosd.daemon.access.counters import Counters, period_amounts, period_window, rate_window
from aiosd.sdk import CallError, Client, Reply

from .harness import MONGO_URL, AgentRegistry, World
from .rawamqp import RawAgent
from .scripted_worker import ScriptedWorker, chat_args


@pytest.fixture
def registry(world: World) -> Iterator[AgentRegistry]:
    reg = AgentRegistry(world)
    yield reg
    reg.cleanup()


def burst(url: str, count: int, syscall: str = "memory.add") -> list[Reply]:
    """``count`` concurrent calls from one agent."""
    with Client(url, timeout=30) as client, ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(client.request, syscall, {"content": f"note {i}"}) for i in range(count)]
        return [f.result() for f in futures]


def codes(replies: list[Reply]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in replies:
        key = "ok" if r.status.value == "ok" else r.error.code.value  # type: ignore[union-attr]
        out[key] = out.get(key, 0) + 1
    return out


def test_rate_limit_is_exact_under_concurrency(world: World, make_scheduler: Any, registry: AgentRegistry) -> None:
    make_scheduler(threads="8").start()
    url = registry.add("rate", "--rate", "5/3600")
    name = registry.name("rate")
    for _ in range(2):  # a burst straddling the (hourly) window boundary is retried once
        window = rate_window(name, 3600)
        replies = burst(url, 16)
        if rate_window(name, 3600).key == window.key:
            break
    assert codes(replies) == {"ok": 5, "rate_limited": 11}
    limited = next(r for r in replies if r.status.value != "ok")
    assert limited.status.value == "denied" and "rate limit of 5 requests per 3600s" in limited.error.message  # type: ignore[union-attr]
    assert world.db().counters.find_one({"_id": window.key})["requests"] == 5
    assert world.db().audit.count_documents({"agent": name, "code": "rate_limited", "decision": "denied"}) == 11


def test_request_quota_is_exact_and_visible(world: World, make_scheduler: Any, registry: AgentRegistry) -> None:
    make_scheduler(threads="8").start()
    url = registry.add("quota", "--requests", "7", "--rate", "none")
    name = registry.name("quota")
    replies = burst(url, 20)
    assert codes(replies) == {"ok": 7, "quota_exceeded": 13}
    period = world.db().counters.find_one({"_id": period_window(name, "day").key})
    assert period is not None and period["requests"] == 7
    shown = registry.cli("agents", "show", name, "--json")
    usage = json.loads(shown.stdout)["usage"]
    assert any(u.get("kind") == "period" and u["requests"] == 7 for u in usage)


def test_counters_stay_exact_with_many_threads(world: World) -> None:
    col = pymongo.MongoClient(MONGO_URL, tz_aware=True)[world.db_name]["counters"]
    counters = Counters(col)
    key = f"x:{uuid.uuid4().hex}"
    with ThreadPoolExecutor(16) as pool:
        taken = list(
            pool.map(lambda _: counters.reserve(key, period_amounts(requests=1), {"requests": 200}, {}), range(300))
        )
        list(pool.map(lambda _: counters.add(key, period_amounts(prompt_tokens=3), {}), range(400)))
    doc = col.find_one({"_id": key})
    assert sum(t is not None for t in taken) == 200
    assert doc is not None and (doc["requests"], doc["prompt_tokens"]) == (200, 1200)


def test_memory_quota(world: World, make_scheduler: Any, registry: AgentRegistry) -> None:
    make_scheduler().start()
    url = registry.add("mem", "--memory-notes", "3", "--memory-bytes", "100")
    with Client(url, timeout=20) as client:
        ids = [client.memory.add(f"note {i}").id for i in range(3)]
        full = client.request("memory.add", {"content": "one too many"})
        assert (full.status.value, full.error.code.value) == ("denied", "quota_exceeded")  # type: ignore[union-attr]
        client.memory.delete(ids[0])
        ids.append(client.memory.add("room again").id)
        too_big = client.request("memory.update", {"id": ids[1], "content": "x" * 100})
        assert too_big.error is not None and too_big.error.code.value == "quota_exceeded"
        assert client.memory.get(ids[1]).content == "note 1"  # unchanged
    doc = world.db().counters.find_one({"_id": f"{registry.name('mem')}:memory"})
    assert doc is not None and doc["notes"] == 3 and doc["bytes"] == len("note 1note 2room again")


def memory_client(make_scheduler: Any, registry: AgentRegistry, name: str, notes: int) -> Client:
    """A scheduler, and a client of a new agent allowed ``notes`` notes of 1000 bytes in all."""
    make_scheduler().start()
    return Client(registry.add(name, "--memory-notes", str(notes), "--memory-bytes", "1000"), timeout=20)


def same_reply(a: Reply, b: Reply) -> bool:
    """The same reply, sent again (its timings aside)."""
    return a.model_dump(exclude={"timings"}) == b.model_dump(exclude={"timings"})


def memory_usage(world: World, agent: str) -> tuple[int, int]:
    """The agent's memory counter: (notes, bytes)."""
    doc = world.db().counters.find_one({"_id": f"{agent}:memory"})
    assert doc is not None
    return int(doc["notes"]), int(doc["bytes"])


def test_copies_of_a_stored_memory_add_change_nothing(
    world: World, make_scheduler: Any, registry: AgentRegistry
) -> None:
    """A copy of a completed ``memory.add`` gets the stored reply: at the quota, and after its note was deleted."""
    with memory_client(make_scheduler, registry, "again", notes=2) as client:
        first = client.request("memory.add", {"content": "first note"}, message_id="again-1")
        client.request("memory.add", {"content": "second note"}, message_id="again-2")
        at_quota = client.request("memory.add", {"content": "first note"}, message_id="again-1")
        client.memory.delete(first.result["id"])
        after_delete = client.request("memory.add", {"content": "first note"}, message_id="again-1")
        with pytest.raises(CallError) as gone:
            client.memory.get(first.result["id"])
    assert first.status.value == "ok"
    assert same_reply(at_quota, first) and same_reply(after_delete, first)
    assert gone.value.code == "not_found"  # the copy did not bring the note back
    agent = registry.name("again")
    assert memory_usage(world, agent) == (1, len("second note"))
    decisions = [a["decision"] for a in world.db().audit.find({"agent": agent, "message_id": "again-1"}).sort("seq", 1)]
    assert decisions == ["accepted", "completed"]


def test_a_message_id_once_answered_is_never_run_again(
    world: World, make_scheduler: Any, registry: AgentRegistry
) -> None:
    """A call under a message id stored with a failure or with another syscall gets that reply and runs nothing."""
    with memory_client(make_scheduler, registry, "reuse", notes=1) as client:
        kept = client.request("memory.add", {"content": "the one note"}, message_id="reuse-1")
        refused = client.request("memory.add", {"content": "one too many"}, message_id="reuse-2")
        client.memory.delete(kept.result["id"])  # room again: a copy must still not store its note
        again = client.request("memory.add", {"content": "one too many"}, message_id="reuse-2")
        missing = client.request("memory.get", {"id": "n_nothing"}, message_id="reuse-3")
        other = client.request("memory.add", {"content": "under a read's id"}, message_id="reuse-3")
    assert refused.error is not None and refused.error.code.value == "quota_exceeded"
    assert missing.error is not None and missing.error.code.value == "not_found"
    assert same_reply(again, refused) and same_reply(other, missing)
    agent = registry.name("reuse")
    assert world.db().memory.count_documents({"agent": agent, "deleted": False}) == 0
    assert memory_usage(world, agent) == (0, 0)


def test_policy_gates_syscalls_and_clamps_priority(world: World, make_scheduler: Any, registry: AgentRegistry) -> None:
    make_scheduler().start()
    url = registry.add("narrow", "--allow", "memory.add", "--allow", "memory.get", "--max-priority", "2")
    name = registry.name("narrow")
    agent = RawAgent(url, user=name)
    try:
        ok = agent.call("memory.add", {"content": "urgent!"}, priority=9)
        denied = agent.call("memory.search", {"query": "urgent"})
    finally:
        agent.close()
    assert ok["status"] == "ok"
    assert world.db().results.find_one({"id": ok["id"]})["priority"] == 2  # clamped, not refused
    assert (denied["status"], denied["error"]["code"]) == ("denied", "denied")
    assert "does not allow memory.search" in denied["error"]["message"]
    record = world.db().audit.find_one({"message_id": denied["id"]})
    assert record["decision"] == "denied" and record["resource"] == f"memory:{name}"


@pytest.fixture
def worker(world: World) -> Iterator[ScriptedWorker]:
    w = ScriptedWorker(world.amqp_url(), f"w-{uuid.uuid4().hex[:6]}", capacity=3).start()
    yield w
    w.stop()


def test_token_quota_and_models(
    world: World, make_scheduler: Any, registry: AgentRegistry, worker: ScriptedWorker
) -> None:
    make_scheduler().start()
    url = registry.add("llm", "--tokens", "10", "--model", "scripted-*")
    name = registry.name("llm")
    with Client(url, timeout=30) as client, ThreadPoolExecutor(2) as pool:
        for _ in range(2):  # each scripted call uses 5 + 3 tokens: 8, then 16
            fut = pool.submit(client.request, "llm.chat", chat_args(model="scripted-model"))
            worker.finish(worker.next_lease())
            assert fut.result(30).status.value == "ok"
        over = client.request("llm.chat", chat_args(model="scripted-model"))
        wrong_model = client.request("llm.chat", chat_args(model="gpt-4"))
        unnamed = client.request("llm.chat", chat_args())
        memory_still_fine = client.request("memory.add", {"content": "tokens do not limit memory"})
    assert (over.status.value, over.error.code.value) == ("denied", "quota_exceeded")  # type: ignore[union-attr]
    assert "token quota of 10 per day" in over.error.message  # type: ignore[union-attr]
    assert (
        wrong_model.error is not None
        and wrong_model.error.code.value == "denied"
        and "gpt-4" in wrong_model.error.message
    )
    assert unnamed.error is not None and "name one" in unnamed.error.message
    assert memory_still_fine.status.value == "ok"
    period = world.db().counters.find_one({"_id": period_window(name, "day").key})
    assert period is not None
    assert (period["prompt_tokens"], period["completion_tokens"], period["llm_calls"], period["requests"]) == (
        10,
        6,
        2,
        3,
    )


def test_max_concurrent_llm_calls(
    world: World, make_scheduler: Any, registry: AgentRegistry, worker: ScriptedWorker
) -> None:
    make_scheduler().start()
    url = registry.add("busy", "--max-llm", "1")
    with Client(url, timeout=60) as client, ThreadPoolExecutor(3) as pool:
        futures: list[Future[Reply]] = [pool.submit(client.request, "llm.chat", chat_args(f"q{i}")) for i in range(3)]
        for _ in range(3):
            lease = worker.next_lease()
            assert worker.no_lease(1.5), "a second call was leased while the agent held its maximum of 1"
            worker.finish(lease)
        assert all(f.result(30).status.value == "ok" for f in futures)
    with Client(world.amqp_url(), timeout=60) as operator, ThreadPoolExecutor(3) as pool:
        # The operator (no max_concurrent_llm) gets the worker's whole capacity.
        futures = [pool.submit(operator.request, "llm.chat", chat_args(f"o{i}")) for i in range(3)]
        leases = [worker.next_lease() for _ in range(3)]
        for lease in leases:
            worker.finish(lease)
        assert all(f.result(30).status.value == "ok" for f in futures)
