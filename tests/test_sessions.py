"""Sessions: context.* syscalls and llm.chat that sends only the new turn (real SmolLM2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aiosd.daemon.services.sessions import fit
from aiosd.sdk import CallError, Client

from .harness import WorkerProcess, World

SYSTEM = {"role": "system", "content": "You are a terse assistant."}


def chat(client: Client, session: str, text: str) -> Any:
    args = {"messages": [{"role": "user", "content": text}], "max_tokens": 12, "temperature": 0}
    reply = client.request("llm.chat", args, session=session, timeout=120)
    assert reply.status.value == "ok", reply.error
    return reply


def test_multi_turn_fork_and_restart(world: World, make_scheduler: Any, tmp_path: Path) -> None:
    scheduler = make_scheduler().start()
    worker = WorkerProcess(world, tmp_path, worker_id="cpu0", heartbeat_interval="0.5").start()
    try:
        with Client(world.amqp_url(), timeout=120) as client:
            created = client.call("context.create", {"session": "trip", "messages": [SYSTEM]})
            assert created["session"] == "trip" and created["length"] == 1
            first = chat(client, "trip", "My name is Ada. Say hello.")
            second = chat(client, "trip", "What is my name?")
            # The second turn sent one message, yet the model saw the whole conversation.
            assert second.usage.prompt_tokens > first.usage.prompt_tokens + 5
            history = client.call("context.get", {"session": "trip"})["messages"]
            assert [m["role"] for m in history] == ["system", "user", "assistant", "user", "assistant"]
            assert history[1]["content"] == "My name is Ada. Say hello."
            assert history[2]["content"] == first.result["text"] and history[4]["content"] == second.result["text"]

            fork = client.call("context.fork", {"session": "trip", "new_session": "trip-b"})
            assert fork["forked_from"] == "trip" and fork["length"] == 5
            chat(client, "trip-b", "Thanks.")
            assert client.call("context.get", {"session": "trip"})["length"] == 5
            assert client.call("context.get", {"session": "trip-b"})["length"] == 7

        scheduler.stop()
        make_scheduler().start()
        with Client(world.amqp_url(), timeout=120) as client:
            kept = client.call("context.get", {"session": "trip"})
            assert kept["length"] == 5 and kept["messages"] == history
            listed = {s["session"] for s in client.call("context.list", {})["sessions"]}
            assert listed == {"trip", "trip-b"}
    finally:
        worker.stop()


def test_context_crud_and_errors(world: World, make_scheduler: Any) -> None:
    make_scheduler().start()
    with Client(world.amqp_url(), timeout=30) as client:
        made = client.call("context.create", {})
        sid = made["session"]
        assert sid.startswith("s_") and made["length"] == 0
        appended = client.call("context.append", {"session": sid, "messages": [{"role": "user", "content": "hi"}]})
        assert appended["length"] == 1
        with pytest.raises(CallError) as err:
            client.call("context.create", {"session": sid})
        assert err.value.code == "conflict"
        assert client.call("context.delete", {"session": sid})["session"] == sid
        with pytest.raises(CallError) as err:
            client.call("context.get", {"session": sid})
        assert err.value.code == "not_found"
        with pytest.raises(CallError) as err:
            client.call("context.append", {"session": "../etc", "messages": [{"role": "user", "content": "x"}]})
        assert err.value.code == "invalid_args"


def test_truncation_keeps_system_and_newest_turns() -> None:
    history = [{"role": "system", "content": "rules"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "x" * 300} for i in range(20)
    ]
    own = [{"role": "user", "content": "latest question"}]
    kept = fit(history, own, context_length=600, max_tokens=100)
    assert kept[0] == history[0] and kept[-1] == own[0]
    middle = kept[1:-1]
    assert middle and middle == history[len(history) - len(middle) :]  # the newest turns, in order
    assert len(middle) < 19
    assert fit(history, own, context_length=100_000, max_tokens=100) == [*history, *own]
