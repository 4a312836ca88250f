"""Routing between workers: prefix affinity unless loads are imbalanced, else the least loaded."""

from __future__ import annotations

from typing import Any

from aiosd.daemon.leasing import routing
from aiosd.daemon.leasing.fleet import Member
from aiosd.daemon.leasing.routing import Router, affinity_key
from aiosd.sdk.cluster import WorkerState


def _member(wid: str, capacity: int = 4, held: int = 0, **state: Any) -> Member:
    fields: dict[str, Any] = {"worker_id": wid, "host": "h", "backend": "b", "model": "m", "capacity": capacity}
    fields.update(state)
    return Member(WorkerState(**fields), last_seen=0.0, leases={f"{wid}-{i}" for i in range(held)})


def _chat(system: str | None = None, session: str | None = None, model: str | None = None) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    args: dict[str, Any] = {"messages": [*messages, {"role": "user", "content": "hi"}]}
    if model:
        args["model"] = model
    return {"syscall": "llm.chat", "agent": "a", "session": session, "args": args}


def test_the_least_loaded_worker_wins_without_affinity() -> None:
    members = {"w1": _member("w1", held=3), "w2": _member("w2", held=1), "w3": _member("w3", held=2)}
    assert Router(slack=2).choose(_chat(), members) == "w2"


def test_load_is_a_fraction_of_capacity() -> None:
    members = {"small": _member("small", capacity=2, held=1), "big": _member("big", capacity=8, held=3)}
    assert Router(slack=0).choose(_chat(), members) == "big"  # 3/8 < 1/2


def test_a_call_goes_back_to_the_worker_holding_its_prefix_within_the_slack() -> None:
    router = Router(slack=2)
    members = {"w1": _member("w1", held=0), "w2": _member("w2", held=0)}
    call = _chat(system="You are a careful planner.")
    router.served(call, "w2")
    members["w2"] = _member("w2", held=2)  # busier, but within the slack
    assert router.choose(call, members) == "w2"
    members["w2"] = _member("w2", held=3)  # beyond the slack: balance instead
    assert router.choose(call, members) == "w1"


def test_sessions_outrank_system_prompts_as_the_affinity_key() -> None:
    with_session = _chat(system="same prompt", session="s1")
    assert affinity_key(with_session) == "session:a:s1"
    assert affinity_key(_chat(system="same prompt")) == affinity_key(_chat(system="same prompt"))
    assert affinity_key(_chat(system="same prompt")) != affinity_key(_chat(system="other prompt"))
    assert affinity_key(_chat()) is None


def test_only_workers_of_the_right_kind_model_and_health_with_room_are_chosen() -> None:
    members = {
        "full": _member("full", capacity=1, held=1),
        "sick": _member("sick", healthy=False),
        "draining": _member("draining", draining=True),
        "tools": _member("tools", kind="tools"),
        "other-model": _member("other-model", model="big"),
    }
    router = Router(slack=1)
    assert router.choose(_chat(model="m"), members) is None
    members["ok"] = _member("ok", held=3)
    assert router.choose(_chat(model="m"), members) == "ok"
    tool_call = {"syscall": "tool.call", "agent": "a", "args": {"name": "calculator"}}
    assert router.choose(tool_call, members) == "tools"


def test_the_affinity_memory_is_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(routing, "MAX_REMEMBERED", 3)
    router = Router(slack=5)
    calls = [_chat(session=f"s{i}") for i in range(5)]
    for call in calls:
        router.served(call, "w2")
    members = {"w1": _member("w1"), "w2": _member("w2", held=1)}
    assert router.choose(calls[0], members) == "w1"  # forgotten: least loaded
    assert router.choose(calls[-1], members) == "w2"  # remembered
