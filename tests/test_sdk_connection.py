"""The SDK's connections: heartbeats under load and when idle, and calls that survive a lost connection.

Connections are closed from the broker side with the management API, as a
broker restart, a network blip or a heartbeat timeout would close them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import pytest

from aiosd.sdk import AsyncClient, Client

from .harness import AgentRegistry, SchedulerProcess, World, management

HEARTBEAT = 2  # seconds: the broker closes a connection silent for about twice this


def sdk_connections(vhost: str, agent: str) -> list[dict[str, Any]]:
    """The SDK's connections in ``vhost`` for ``agent``, as the broker lists them."""
    with management() as api:
        conns = api.get(f"/vhosts/{quote(vhost, safe='')}/connections").json()
    return [
        c
        for c in conns
        if c.get("user") == agent
        and (c.get("client_properties") or {}).get("connection_name", "").startswith(f"aiosd-sdk {agent} ")
    ]


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def kill(conns: list[dict[str, Any]]) -> None:
    """Close ``conns`` from the broker side (CONNECTION_FORCED, as on a broker shutdown)."""
    with management() as api:
        for c in conns:
            api.delete(f"/connections/{quote(c['name'], safe='')}", headers={"X-Reason": "test kills the SDK"})


def both_connections(vhost: str, agent: str, not_in: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """The client's publish and reply connections, once the broker lists both (and neither is in ``not_in``)."""
    found: list[dict[str, Any]] = []

    def two() -> bool:
        found[:] = [c for c in sdk_connections(vhost, agent) if c["name"] not in not_in]
        return len(found) == 2

    wait_for(two, what="the client's two connections")
    return found


def test_heartbeats_flow_while_replies_stream(shared_world: World, scheduler: SchedulerProcess) -> None:
    """Replies arriving without pause for five heartbeat intervals do not starve the client's heartbeats."""
    with Client(shared_world.amqp_url(), timeout=20, heartbeat=HEARTBEAT) as client:
        before = both_connections(shared_world.vhost, client.agent)
        assert {c["timeout"] for c in before} == {HEARTBEAT}  # the broker enforces the short heartbeat
        ref = client.memory.add("a note to read again and again")
        stop = threading.Event()
        counts = [0] * 4

        def reader(n: int) -> None:
            while not stop.is_set():
                assert client.memory.get(ref.id).id == ref.id
                counts[n] += 1

        with ThreadPoolExecutor(len(counts)) as pool:
            readers = [pool.submit(reader, n) for n in range(len(counts))]
            time.sleep(5 * HEARTBEAT)
            stop.set()
            for r in readers:
                r.result()
        after = sdk_connections(shared_world.vhost, client.agent)
        assert sum(counts) > 50 * HEARTBEAT  # replies really did stream the whole time
        assert client.connection_stats.reconnects == 0
        assert sorted(c["name"] for c in after) == sorted(c["name"] for c in before)  # the same connections


def test_async_client_heartbeats_when_idle_and_busy(shared_world: World, scheduler: SchedulerProcess) -> None:
    """An idle AsyncClient keeps its connections for three heartbeat intervals, then a busy one as well."""

    async def scenario() -> None:
        async with AsyncClient(shared_world.amqp_url(), timeout=20, heartbeat=HEARTBEAT) as client:
            before = await asyncio.to_thread(both_connections, shared_world.vhost, client.agent)
            await asyncio.sleep(3 * HEARTBEAT)  # idle: only heartbeats keep the connections open
            ref = await client.memory.add("async heartbeat note")
            deadline = asyncio.get_running_loop().time() + 3 * HEARTBEAT
            calls = 0
            while asyncio.get_running_loop().time() < deadline:
                notes = await asyncio.gather(*(client.memory.get(ref.id) for _ in range(8)))
                assert {n.id for n in notes} == {ref.id}
                calls += len(notes)
            after = await asyncio.to_thread(sdk_connections, shared_world.vhost, client.agent)
            assert calls > 50 * HEARTBEAT
            assert client.connection_stats.reconnects == 0
            assert sorted(c["name"] for c in after) == sorted(c["name"] for c in before)

    asyncio.run(scenario())


def test_calls_survive_connections_killed_mid_run(shared_world: World, scheduler: SchedulerProcess) -> None:
    """Kill the client's connections twice while 12 threads make calls: every call completes, each exactly once."""
    run = f"run-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()
    with Client(shared_world.amqp_url(), timeout=60, heartbeat=HEARTBEAT) as client:
        ids: list[str] = []
        lock = threading.Lock()

        def caller(n: int) -> int:
            made = 0
            while not stop.is_set():
                ref = client.memory.add(f"{run} note {n}-{made}", tags=[run])  # raises if the call failed
                made += 1
                with lock:
                    ids.append(str(ref.id))
            return made

        def done() -> int:
            with lock:
                return len(ids)

        with ThreadPoolExecutor(12) as pool:
            callers = [pool.submit(caller, n) for n in range(12)]
            killed: frozenset[str] = frozenset()
            for kills in (1, 2):
                conns = both_connections(shared_world.vhost, client.agent, not_in=killed)  # the live ones
                before = done()
                kill(conns)  # calls are in flight: the threads never pause
                killed |= {c["name"] for c in conns}
                wait_for(lambda: client.connection_stats.reconnects >= kills, what=f"reconnect {kills}")  # noqa: B023
                wait_for(lambda: done() >= before + 200, what="calls after the reconnect")  # noqa: B023
            stop.set()
            made = sum(c.result() for c in callers)
        assert made == len(ids) > 400
        assert len(set(ids)) == made
        assert client.connection_stats.reconnects == 2
    # Re-published requests kept their message ids: the scheduler ran each call once.
    assert shared_world.db()["memory"].count_documents({"tags": run}) == made


@pytest.fixture
def paused(scheduler: SchedulerProcess) -> Iterator[Callable[[bool], None]]:
    """Pause (SIGSTOP) and resume the module's scheduler; always resumed afterwards."""
    assert scheduler.proc is not None
    pid = scheduler.proc.pid

    def pause(on: bool) -> None:
        os.kill(pid, signal.SIGSTOP if on else signal.SIGCONT)

    yield pause
    os.kill(pid, signal.SIGCONT)


def test_replies_lost_while_away_come_from_stored_results(
    shared_world: World, scheduler: SchedulerProcess, registry: AgentRegistry, paused: Callable[[bool], None]
) -> None:
    """Replies sent while the client had no reply queue are fetched by id after it reconnects."""
    url = registry.add("away")
    agent = registry.name("away")
    vhost = quote(shared_world.vhost, safe="")
    results = shared_world.db()["results"]
    with Client(url, timeout=60, heartbeat=HEARTBEAT) as client:
        client.memory.add("warm up")  # the scheduler knows the agent and its policy
        answered = results.count_documents({})
        paused(True)
        with ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(client.memory.add, f"sent before the outage {i}") for i in range(10)]
            wait_for(lambda: shared_world.queue_depth("aiosd.syscalls") >= 10, what="10 calls at the broker")
            conns = both_connections(shared_world.vhost, agent)
            with management() as api:
                grant = api.get(f"/permissions/{vhost}/{quote(agent, safe='')}").json()
                # Keep the client out while the scheduler answers into a reply queue that is gone.
                api.delete(f"/permissions/{vhost}/{quote(agent, safe='')}").raise_for_status()
                kill(conns)
                for q in api.get(f"/queues/{vhost}").json():
                    if q["name"].startswith(f"aiosd.reply.{agent}."):
                        api.delete(f"/queues/{vhost}/{quote(q['name'], safe='')}").raise_for_status()
                paused(False)
                wait_for(lambda: results.count_documents({}) >= answered + 10, what="the scheduler to answer")
                time.sleep(1.0)  # the replies are published now, to nowhere
                perms = {k: grant[k] for k in ("configure", "write", "read")}
                api.put(f"/permissions/{vhost}/{quote(agent, safe='')}", json=perms).raise_for_status()
            notes = [f.result(timeout=60) for f in futures]
        assert len({n.id for n in notes}) == 10
        assert client.connection_stats.recovered == 10
        assert client.connection_stats.republished == 0  # the broker had confirmed every request
