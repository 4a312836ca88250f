"""Tools end to end: a real scheduler, a real ``aiosd tools`` process, real agents and policies.

The scheduler and the tool runner both have the test tool package
(tests/toolpkg: a sleeper, an endless loop, a memory hog, a marker writer, an
irreversible "launch", a crasher) installed next to the built-ins.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from aiosd.sdk import Client, Reply
from aiosd.workers.stdtools import CALCULATOR

from .harness import AgentRegistry, SchedulerProcess, ToolsProcess, World, with_test_tools
from .rawamqp import RawAgent
from .scripted_worker import wait_until

BUILTINS = {"calculator", "json_query", "regex", "read_file"}


@pytest.fixture(scope="module")
def tool_scheduler(shared_world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchedulerProcess]:
    proc = SchedulerProcess(shared_world, tmp_path_factory.mktemp("scheduler"), approval_poll="0.2")
    with_test_tools(proc.env)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def runner(
    shared_world: World, tool_scheduler: SchedulerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ToolsProcess]:
    proc = ToolsProcess(
        shared_world,
        tmp_path_factory.mktemp("tools"),
        heartbeat_interval="0.5",
        tools_capacity="3",
        tool_memory_mb="256",
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(shared_world: World, runner: ToolsProcess) -> Iterator[Client]:
    """The scheduler's own (trusted) user: every tool is allowed."""
    with Client(shared_world.amqp_url(), timeout=60) as c:
        yield c


def tool(client: Client, name: str, args: dict[str, Any], **call: Any) -> Reply:
    return client.request("tool.call", {"name": name, "args": args, **call}, timeout=60)


def error_of(reply: Reply) -> tuple[str, str, str]:
    assert reply.error is not None, reply
    return reply.status.value, reply.error.code.value, reply.error.message


def test_the_runner_registers_as_a_tools_worker(shared_world: World, runner: ToolsProcess) -> None:
    doc = wait_until(lambda: shared_world.db()["workers"].find_one({"_id": runner.worker_id}))
    assert (doc["kind"], doc["backend"], doc["capacity"], doc["healthy"]) == ("tools", "tools", 3, True)


def test_tool_list_gives_the_builtins_with_their_schemas(client: Client) -> None:
    tools = {t["name"]: t for t in client.call("tool.list")["tools"]}
    assert set(tools) >= BUILTINS and "test_spin" in tools
    calc = tools["calculator"]
    assert calc["parameters"] == dict(CALCULATOR.parameters)
    assert (calc["irreversible"], calc["timeout"], calc["max_timeout"]) == (False, 5.0, 10.0)
    assert "arithmetic" in calc["description"]
    assert tools["test_launch"]["irreversible"] is True
    assert tools["regex"]["parameters"]["required"] == ["pattern", "text"]


def test_valid_calls_return_their_results(client: Client) -> None:
    reply = tool(client, "calculator", {"expression": "2 * (3 + 4) ** 2 + sqrt(16)"})
    assert reply.status.value == "ok", reply
    assert reply.result["name"] == "calculator" and reply.result["result"]["value"] == 102.0
    assert reply.result["duration_ms"] > 0 and reply.timings.run_ms >= reply.result["duration_ms"]

    found = client.call(
        "tool.call",
        {"name": "regex", "args": {"pattern": r"(\w+)@(\w+)\.org", "text": "ann@example.org, bob@test.org"}},
    )
    assert [m["groups"] for m in found["result"]["matches"]] == [["ann", "example"], ["bob", "test"]]

    data = {"items": [{"name": "a", "price": 3}, {"name": "b", "price": 5}]}
    picked = client.call("tool.call", {"name": "json_query", "args": {"data": data, "query": "$.items[*].price"}})
    assert picked["result"] == {"matches": [3, 5], "count": 2, "truncated": False}

    typed = client.tools.call("calculator", {"expression": "factorial(20) // 10**15"}, timeout=2)
    assert (typed.name, typed.result) == ("calculator", {"expression": "factorial(20) // 10**15", "value": 2432})
    assert "calculator" in {t.name for t in client.tools.list().tools}


def test_invalid_arguments_are_refused_before_anything_runs(
    shared_world: World, client: Client, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    bad = tool(client, "test_marker", {"marker": str(marker), "count": "many"})
    status, code, message = error_of(bad)
    assert (status, code) == ("error", "invalid_args") and "args.count" in message and "integer" in message
    status, code, message = error_of(tool(client, "test_marker", {"marker": str(marker)}))
    assert code == "invalid_args" and "'count' is a required property" in message
    status, code, message = error_of(tool(client, "test_spin", {}, timeout=30))
    assert code == "invalid_args" and "max_timeout" in message
    status, code, message = error_of(tool(client, "no_such_tool", {}))
    assert code == "invalid_args" and "unknown tool" in message and "calculator" in message

    time.sleep(0.5)
    assert not marker.exists(), "a refused call must not run"
    refused = list(shared_world.db()["audit"].find({"message_id": bad.id}))
    assert [r["decision"] for r in refused] == ["rejected"]  # refused at intake: never stored, never leased

    good = tool(client, "test_marker", {"marker": str(marker), "count": 2})
    assert good.status.value == "ok", good
    assert marker.read_text() == "2"  # the same call with valid arguments does run


def test_a_call_runs_in_a_private_scratch_directory_without_the_daemons_environment(
    client: Client, tmp_path: Path
) -> None:
    reply = tool(client, "test_marker", {"marker": str(tmp_path / "m"), "count": 1})
    result = reply.result["result"]
    assert Path(result["cwd"]).name.startswith("aiosd-tool-test_marker-")
    assert not Path(result["cwd"]).exists(), "the scratch directory is removed after the call"
    assert not [k for k in result["env"] if k.startswith("AIOSD_")]
    assert result["agent"] == "guest" and 0 < result["time_left"] <= 10


def test_an_endless_loop_is_killed_at_its_timeout(client: Client, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    started = time.monotonic()
    reply = tool(client, "test_spin", {"pidfile": str(pidfile)}, timeout=1.5)
    elapsed = time.monotonic() - started
    status, code, message = error_of(reply)
    assert (status, code) == ("error", "time_limit_exceeded") and "1.5s" in message
    assert 1.5 <= elapsed < 10
    grandchild = int(pidfile.read_text())
    wait_until(lambda: not _alive(grandchild), timeout=5)  # the whole process group went
    assert tool(client, "calculator", {"expression": "1 + 1"}).result["result"]["value"] == 2


def test_a_memory_hog_is_stopped(client: Client) -> None:
    status, code, message = error_of(tool(client, "test_hog", {"mb": 2048}))
    assert (status, code) == ("error", "resource_limit_exceeded") and "256 MiB" in message
    assert tool(client, "test_hog", {"mb": 64}).result["result"] == {"allocated_mb": 64}


def test_tool_errors_are_reported(client: Client) -> None:
    _, code, message = error_of(tool(client, "test_crash", {"how": "raise"}))
    assert (code, message.split(" at ")[0]) == ("tool_failed", "RuntimeError: the tool broke")
    assert error_of(tool(client, "test_crash", {"how": "exit"}))[1] == "tool_failed"
    assert error_of(tool(client, "calculator", {"expression": "1 / 0"}))[1:] == ("invalid_args", "division by zero")
    assert tool(client, "test_crash", {"how": "print"}).result["result"] == {"printed": True}


def test_two_slow_calls_run_in_parallel(client: Client) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda _: tool(client, "test_sleep", {"seconds": 2}), range(2)))
    elapsed = time.monotonic() - started
    assert [r.status.value for r in replies] == ["ok", "ok"], replies
    assert len({r.result["result"]["pid"] for r in replies}) == 2  # one child process each
    assert all(r.result["result"]["slept"] >= 2 for r in replies)
    assert elapsed < 3.9, f"two 2 s calls took {elapsed:.1f} s: they did not overlap"


def test_policies_list_the_tools_an_agent_may_call(registry: AgentRegistry) -> None:
    plain = registry.add("plain")  # the default policy: the built-in tools
    narrow = registry.add("narrow", "--tool", "calculator")
    no_tools = registry.add("notools", "--allow", "memory.*")
    with Client(plain, timeout=30) as p, Client(narrow, timeout=30) as n, Client(no_tools, timeout=30) as x:
        assert {t["name"] for t in p.call("tool.list")["tools"]} == BUILTINS
        assert error_of(tool(p, "test_spin", {}))[:2] == ("denied", "denied")

        assert [t["name"] for t in n.call("tool.list")["tools"]] == ["calculator"]
        assert n.call("tool.call", {"name": "calculator", "args": {"expression": "6 * 7"}})["result"]["value"] == 42
        status, code, message = error_of(tool(n, "regex", {"pattern": "a", "text": "a"}))
        assert (status, code) == ("denied", "denied") and "tool 'regex'" in message

        assert error_of(tool(x, "calculator", {"expression": "1"}))[:2] == ("denied", "denied")


def test_an_irreversible_tool_waits_for_a_human(shared_world: World, registry: AgentRegistry, tmp_path: Path) -> None:
    url = registry.add("launcher", "--tool", "test_*")
    agent = RawAgent(url, user=registry.name("launcher"))
    marker = tmp_path / "rocket"
    try:
        body = json.dumps({"syscall": "tool.call", "args": {"name": "test_launch", "args": {"marker": str(marker)}}})
        call_id = agent.publish(body.encode(), routing_key="tool.call")
        interim = agent.wait(call_id)
        assert (interim["status"], interim["error"]["code"]) == ("pending", "approval_pending")
        time.sleep(0.5)
        assert not marker.exists(), "nothing runs before the approval"

        done = registry.cli("approve", call_id, "--reason", "go")
        assert done.returncode == 0, done.stderr
        final = agent.wait(call_id)
        assert final["status"] == "ok" and final["result"]["result"] == {"launched": True}
        assert marker.read_text() == "launched"
        # A reversible tool of the same agent runs at once.
        quick = agent.call("tool.call", {"name": "test_sleep", "args": {"seconds": 0}})
        assert quick["status"] == "ok"
    finally:
        agent.close()


def test_read_file_reads_only_the_callers_own_storage(registry: AgentRegistry) -> None:
    owner_url, other_url = registry.add("writer"), registry.add("reader")
    with Client(owner_url, timeout=30) as owner, Client(other_url, timeout=30) as other:
        owner.call("storage.write", {"path": "/notes/todo.txt", "text": "first"})
        owner.call("storage.write", {"path": "/notes/todo.txt", "text": "buy milk\ncall ann"})
        owner.call("storage.write", {"path": "/data.json", "text": json.dumps({"xs": [1, 2, 3]})})

        got = owner.call("tool.call", {"name": "read_file", "args": {"path": "/notes/todo.txt"}})["result"]
        assert (got["content"], got["version"], got["encoding"]) == ("buy milk\ncall ann", 2, "utf-8")
        old = owner.call("tool.call", {"name": "read_file", "args": {"path": "/notes/todo.txt", "version": 1}})
        assert old["result"]["content"] == "first"
        window = owner.call(
            "tool.call", {"name": "read_file", "args": {"path": "/notes/todo.txt", "offset": 4, "limit": 4}}
        )
        assert window["result"]["content"] == "milk" and window["result"]["truncated"] is True
        picked = owner.call("tool.call", {"name": "json_query", "args": {"file": "/data.json", "query": "$.xs[-1]"}})
        assert picked["result"]["matches"] == [3]

        # Another agent's read_file looks in its own namespace only.
        assert error_of(tool(other, "read_file", {"path": "/notes/todo.txt"}))[1] == "not_found"
        assert error_of(tool(owner, "read_file", {"path": "/../etc/passwd"}))[1] in ("invalid_args", "not_found")


def test_sigterm_finishes_the_call_in_flight_and_exits_0(world: World, tmp_path: Path) -> None:
    scheduler = SchedulerProcess(world, tmp_path)
    with_test_tools(scheduler.env)
    scheduler.start()
    runner = ToolsProcess(world, tmp_path, heartbeat_interval="0.2", shutdown_timeout="20").start()
    try:
        with Client(world.amqp_url(), timeout=60) as c:
            results: list[Reply] = []
            caller = threading.Thread(target=lambda: results.append(tool(c, "test_sleep", {"seconds": 2})))
            caller.start()
            runner.wait_for("lease_started", timeout=30)
            runner.signal(signal.SIGTERM)
            assert runner.wait(30) == 0
            caller.join(30)
        assert results and results[0].status.value == "ok", results
        assert any(e.get("event") == "worker_goodbye" for e in runner.events())
    finally:
        runner.stop()
        scheduler.stop()


def test_a_lost_runner_reruns_reversible_calls_but_never_an_irreversible_one(world: World, tmp_path: Path) -> None:
    scheduler = SchedulerProcess(world, tmp_path, worker_timeout="2", approval_poll="0.2")
    with_test_tools(scheduler.env)
    scheduler.start()
    first = ToolsProcess(world, tmp_path, heartbeat_interval="0.2").start()
    second = ToolsProcess(world, tmp_path, heartbeat_interval="0.2")
    agent = RawAgent(world.amqp_url())
    marker = tmp_path / "rocket"
    try:
        launch = agent.publish(
            json.dumps(
                {"syscall": "tool.call", "args": {"name": "test_launch", "args": {"marker": str(marker), "seconds": 4}}}
            ).encode(),
            routing_key="tool.call",
        )
        assert agent.wait(launch)["status"] == "pending"
        assert AgentRegistry(world).cli("approve", launch).returncode == 0
        nap = agent.publish(
            json.dumps({"syscall": "tool.call", "args": {"name": "test_sleep", "args": {"seconds": 4}}}).encode(),
            routing_key="tool.call",
        )
        wait_until(lambda: sum(e.get("event") == "lease_started" for e in first.events()) == 2)
        assert first.proc is not None
        first.proc.kill()  # SIGKILL: no goodbye, no outcome; its children die with it
        first.wait(10)

        failed = agent.wait(launch, timeout=30)
        assert (failed["status"], failed["error"]["code"]) == ("error", "unavailable")
        assert "irreversible" in failed["error"]["message"]
        second.start()
        assert agent.wait(nap, timeout=60)["status"] == "ok"  # re-queued and run by the new runner
        time.sleep(1)
        assert not marker.exists(), "the irreversible call neither finished in an orphan nor ran again"
    finally:
        agent.close()
        second.stop()
        first.stop()
        scheduler.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    try:
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0
    except FileNotFoundError:
        return False
