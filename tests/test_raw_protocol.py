"""Every memory syscall from a raw pika client that builds the JSON by hand from docs/protocol.md."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from .harness import SchedulerProcess, World
from .rawamqp import RawAgent


@pytest.fixture
def agent(shared_world: World, scheduler: SchedulerProcess) -> Iterator[RawAgent]:
    a = RawAgent(shared_world.amqp_url())
    yield a
    a.close()


def test_memory_round_trip_without_the_sdk(agent: RawAgent) -> None:
    added = agent.call("memory.add", {"content": "raw clients work too", "tags": ["raw"]})
    assert added["v"] == 1 and added["status"] == "ok" and added["error"] is None
    assert added["syscall"] == "memory.add"
    note_id = added["result"]["id"]

    got = agent.call("memory.get", {"id": note_id})
    assert got["status"] == "ok"
    assert got["result"]["content"] == "raw clients work too" and got["result"]["tags"] == ["raw"]

    updated = agent.call("memory.update", {"id": note_id, "metadata": {"k": 1}})
    assert updated["result"]["metadata"] == {"k": 1} and updated["result"]["content"] == "raw clients work too"

    found = agent.call("memory.search", {"query": "raw clients", "limit": 5})
    assert found["result"]["results"][0]["id"] == note_id

    deleted = agent.call("memory.delete", {"id": note_id})
    assert deleted == {**deleted, "status": "ok", "result": {"id": note_id}}

    missing = agent.call("memory.get", {"id": note_id})
    assert missing["status"] == "error" and missing["error"]["code"] == "not_found"
    assert set(missing["timings"]) == {"queue_ms", "run_ms"} and set(missing["usage"]) >= {"prompt_tokens"}


def test_result_fetched_by_id_without_reply_queue(agent: RawAgent) -> None:
    import json

    call_id = agent.publish(
        json.dumps({"syscall": "memory.add", "args": {"content": "fire and forget"}}).encode(), reply=False
    )
    stored: dict[str, object] = {}
    for _ in range(50):
        answer = agent.call("syscall.result", {"id": call_id})
        if answer["status"] == "error":
            # A kernel call is stored when it completes: until then its id is unknown.
            assert answer["error"]["code"] == "not_found", answer
            time.sleep(0.05)
            continue
        stored = answer["result"]
        if stored["state"] == "completed":
            break
    assert stored.get("state") == "completed"
    reply = stored["reply"]
    assert isinstance(reply, dict) and reply["status"] == "ok" and reply["id"] == call_id
