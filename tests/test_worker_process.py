"""``aiosd worker`` as a real process: real RabbitMQ, real MongoDB-compatible server, real SmolLM2.

No scheduler runs here: the test plays it with pika (:class:`Desk`), publishing
:class:`Lease` messages to the worker exchange and reading the events queue.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from aiosd.sdk.cluster import (
    EVENTS_QUEUE,
    WORKER_EXCHANGE,
    Goodbye,
    Heartbeat,
    Lease,
    Outcome,
    decode_event,
)
from aiosd.sdk.protocol import ErrorCode, encode, utcnow

from .harness import WorkerProcess, World, aiosd_command, management

Event = Heartbeat | Goodbye | Outcome
STORY = [{"role": "user", "content": "Tell me a long story about a brave knight."}]


class Desk:
    """The test playing the scheduler: publishes leases, reads every event the worker sends."""

    def __init__(self, world: World) -> None:
        self.conn = world.pika()
        self.ch = self.conn.channel()
        self.ch.exchange_declare(WORKER_EXCHANGE, "direct", durable=True)
        self.ch.queue_declare(EVENTS_QUEUE, durable=True)
        self.events: list[Event] = []

    def lease(self, worker_id: str, args: dict[str, Any], *, expires_in: float = 60.0, **fields: Any) -> Lease:
        lease_id = uuid.uuid4().hex
        lease = Lease(
            lease_id=lease_id,
            key=f"agent/{lease_id}",
            agent="agent",
            call_id=lease_id,
            args=args,
            expires_at=utcnow() + timedelta(seconds=expires_in),
            **fields,
        )
        self.publish(worker_id, encode(lease))
        return lease

    def publish(self, worker_id: str, body: bytes) -> None:
        self.ch.basic_publish(WORKER_EXCHANGE, worker_id, body)

    def read(self) -> None:
        """Move every waiting event into :attr:`events`."""
        while True:
            method, _props, body = self.ch.basic_get(EVENTS_QUEUE, auto_ack=True)
            if method is None:
                return
            self.events.append(decode_event(body))

    def wait(self, found: Callable[[Event], bool], timeout: float = 60.0) -> Event:
        """The first event (already read or new) for which ``found`` is true."""
        deadline = time.monotonic() + timeout
        while True:
            self.read()
            hit = next((e for e in self.events if found(e)), None)
            if hit is not None:
                return hit
            if time.monotonic() > deadline:
                raise AssertionError(f"no such event in {timeout}s; got {self.events}")
            self.conn.sleep(0.05)

    def outcome(self, lease: Lease, timeout: float = 60.0) -> Outcome:
        event = self.wait(lambda e: isinstance(e, Outcome) and e.lease_id == lease.lease_id, timeout)
        assert isinstance(event, Outcome)
        return event

    def outcomes(self) -> list[Outcome]:
        self.read()
        return [e for e in self.events if isinstance(e, Outcome)]

    def heartbeats(self) -> list[Heartbeat]:
        self.read()
        return [e for e in self.events if isinstance(e, Heartbeat)]

    def close(self) -> None:
        self.conn.close()


def _chat(messages: list[dict[str, str]] | None = None, **args: Any) -> dict[str, Any]:
    return {"messages": messages or STORY, "temperature": 0.0, "max_tokens": 8, **args}


@pytest.fixture(scope="module")
def desk(shared_world: World) -> Iterator[Desk]:
    d = Desk(shared_world)
    yield d
    d.close()


@pytest.fixture(scope="module")
def worker(shared_world: World, desk: Desk, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One embedded-model worker for the tests that only send it leases."""
    proc = WorkerProcess(shared_world, tmp_path_factory.mktemp("worker"), heartbeat_interval="0.5").start()
    yield proc
    proc.stop()


@pytest.fixture
def own_desk(world: World) -> Iterator[Desk]:
    d = Desk(world)
    yield d
    d.close()


@pytest.fixture
def make_worker(world: World, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def make(**settings: str) -> WorkerProcess:
        proc = WorkerProcess(world, tmp_path, **settings).start()
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()


# -- registration and calls ------------------------------------------------------------


def test_registers_with_heartbeats(worker: WorkerProcess, desk: Desk) -> None:
    first = desk.wait(lambda e: isinstance(e, Heartbeat) and e.worker.worker_id == worker.worker_id)
    assert isinstance(first, Heartbeat)
    state = first.worker
    assert (state.backend, state.capacity, state.context_length) == ("llamacpp", 1, 2048)
    assert state.model.startswith("SmolLM2") and state.host
    assert state.healthy and not state.draining and state.leases == []
    assert "in_flight" in state.metrics
    time.sleep(1.2)
    assert len(desk.heartbeats()) >= 2, "heartbeats repeat every heartbeat_interval"


def test_lease_done_with_text_and_usage(worker: WorkerProcess, desk: Desk) -> None:
    lease = desk.lease(worker.worker_id, _chat([{"role": "user", "content": "What is the capital of France?"}]))
    out = desk.outcome(lease)
    assert out.status == "done", out
    assert (out.worker_id, out.key) == (worker.worker_id, lease.key)
    assert out.text.strip()
    assert out.finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 10 and 0 < out.usage.completion_tokens <= 8
    assert out.model.startswith("SmolLM2") and out.run_ms > 0


def test_lease_expired_on_arrival_still_runs(worker: WorkerProcess, desk: Desk) -> None:
    # Only the scheduler judges expiry (clocks differ between hosts); it drops stale results.
    lease = desk.lease(worker.worker_id, _chat(max_tokens=2), expires_in=-60)
    assert desk.outcome(lease).status == "done"
    assert worker.wait_for("lease_expired_on_arrival")["lease_id"] == lease.lease_id


def test_slice_snapshot_and_resume_continue_exactly(worker: WorkerProcess, desk: Desk) -> None:
    args = _chat(max_tokens=12)
    sliced = desk.outcome(desk.lease(worker.worker_id, args, slice_tokens=4))
    assert sliced.status == "slice", sliced
    assert sliced.snapshot is not None and len(sliced.snapshot.token_ids) == 4 and sliced.snapshot.text
    assert sliced.usage.completion_tokens == 4

    resumed = desk.outcome(desk.lease(worker.worker_id, args, resume=sliced.snapshot))
    assert resumed.status == "done" and resumed.finish_reason == "length", resumed
    assert resumed.usage.completion_tokens == 8  # only this slice's work
    assert resumed.text.startswith(sliced.snapshot.text)

    whole = desk.outcome(desk.lease(worker.worker_id, args))
    assert resumed.text == whole.text  # greedy: sliced and unsliced agree token for token


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (_chat(response_format={"type": 12}), "not a valid JSON Schema"),
        ({"messages": []}, "invalid llm.chat arguments"),
        (_chat(max_tokens=3, response_format="json"), "max_tokens"),  # output cut: not valid JSON
        (_chat([{"role": "user", "content": "word " * 3000}]), "context"),  # longer than the context
    ],
    ids=["bad-schema", "no-messages", "json-cut", "too-long"],
)
def test_bad_args_give_an_error_outcome(worker: WorkerProcess, desk: Desk, args: dict[str, Any], says: str) -> None:
    out = desk.outcome(desk.lease(worker.worker_id, args))
    assert out.status == "error", out
    assert out.error_code is ErrorCode.INVALID_ARGS and not out.retryable
    assert out.error_message and says in out.error_message


def test_undecodable_lease_is_dropped_and_the_worker_goes_on(worker: WorkerProcess, desk: Desk) -> None:
    desk.publish(worker.worker_id, b"this is not a lease")
    worker.wait_for("lease_undecodable")
    lease = desk.lease(worker.worker_id, _chat(max_tokens=2))
    assert desk.outcome(lease).status == "done"


# -- capacity and stopping -----------------------------------------------------------


def test_capacity_one_never_holds_two_leases(make_worker: Callable[..., WorkerProcess], own_desk: Desk) -> None:
    worker = make_worker(heartbeat_interval="0.1")
    leases = [own_desk.lease(worker.worker_id, _chat(max_tokens=24)) for _ in range(3)]
    outcomes = [own_desk.outcome(lease) for lease in leases]
    assert [o.status for o in outcomes] == ["done"] * 3
    held = [len(h.worker.leases) for h in own_desk.heartbeats()]
    assert max(held) == 1, held  # busy, but never past its capacity
    running = 0
    for event in worker.events():  # the worker's own log: never two calls at once
        running += {"lease_started": 1, "lease_settled": -1}.get(event.get("event", ""), 0)
        assert running <= 1


def test_sigterm_finishes_in_flight_releases_queued_and_says_goodbye(
    make_worker: Callable[..., WorkerProcess], own_desk: Desk
) -> None:
    worker = make_worker(heartbeat_interval="0.1", shutdown_timeout="30")
    leases = [own_desk.lease(worker.worker_id, _chat(max_tokens=60)) for _ in range(3)]
    worker.wait_for("lease_started")
    worker.signal(signal.SIGTERM)
    assert worker.wait(60) == 0

    outcomes = own_desk.outcomes()
    by_lease = {o.lease_id: o.status for o in outcomes}
    assert len(outcomes) == len(by_lease) == 3, "exactly one outcome per lease"
    assert by_lease[leases[0].lease_id] == "done"  # in flight: finished
    assert [by_lease[lease.lease_id] for lease in leases[1:]] == ["released", "released"]  # queued: handed back
    assert any(h.worker.draining and h.worker.leases for h in own_desk.heartbeats())
    assert isinstance(own_desk.events[-1], Goodbye) and own_desk.events[-1].worker_id == worker.worker_id


def test_sigterm_releases_a_call_that_outlives_the_deadline(
    make_worker: Callable[..., WorkerProcess], own_desk: Desk
) -> None:
    worker = make_worker(shutdown_timeout="2")
    lease = own_desk.lease(worker.worker_id, _chat(max_tokens=1500))  # ~20 s of generation
    worker.wait_for("lease_started")
    stopped = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert time.monotonic() - stopped < 10
    out = own_desk.outcome(lease, timeout=5)
    assert out.status == "released" and out.error_message
    assert isinstance(own_desk.events[-1], Goodbye)


def _close_connections(world: World, connection_name: str) -> int:
    """Force-close the broker connections called ``connection_name`` (as a network cut would)."""
    with management() as api:
        conns = api.get(f"/vhosts/{quote(world.vhost, safe='')}/connections").raise_for_status().json()
        names = [c["name"] for c in conns if c.get("client_properties", {}).get("connection_name") == connection_name]
        for name in names:
            api.delete(f"/connections/{quote(name, safe='')}").raise_for_status()
    return len(names)


def test_connection_loss_mid_call_keeps_the_result_and_serving(
    make_worker: Callable[..., WorkerProcess], own_desk: Desk, world: World
) -> None:
    worker = make_worker(heartbeat_interval="0.2")
    first = own_desk.lease(worker.worker_id, _chat(max_tokens=150))  # ~2 s
    worker.wait_for("lease_started")
    deadline = time.monotonic() + 10
    while not _close_connections(world, f"aiosd-worker-{worker.worker_id}"):
        assert time.monotonic() < deadline, "the worker's connection never showed up"
        time.sleep(0.2)
    worker.wait_for("broker_reconnected")
    assert own_desk.outcome(first).status == "done"  # published on the new connection
    later = own_desk.lease(worker.worker_id, _chat(max_tokens=2))
    assert own_desk.outcome(later).status == "done"


# -- aiosd worker --check ---------------------------------------------------------------


def _check(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    # Fresh means "within 3 heartbeat intervals": 20 s intervals keep "fresh" fresh on a loaded machine.
    env = world.env(AIOSD_HEARTBEAT_INTERVAL="20")
    return subprocess.run(
        aiosd_command("worker", "--check", *args), env=env, capture_output=True, text=True, timeout=60
    )


def test_check_reads_the_registration(world: World) -> None:
    workers = world.db()["workers"]
    workers.insert_one({"_id": "fresh", "last_seen": utcnow(), "healthy": True, "alive": True})
    workers.insert_one({"_id": "stale", "last_seen": utcnow() - timedelta(seconds=300), "healthy": True})
    workers.insert_one({"_id": "sick", "last_seen": utcnow(), "healthy": False})

    ok = _check(world, "--worker-id", "fresh")
    assert ok.returncode == 0, ok.stderr
    assert "healthy" in ok.stdout
    for worker_id, says in [("stale", "stale"), ("sick", "unhealthy"), ("missing", "not registered")]:
        bad = _check(world, "--worker-id", worker_id)
        assert bad.returncode == 1, (worker_id, bad.stdout, bad.stderr)
        assert says in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_check_needs_a_worker_id(world: World) -> None:
    result = _check(world)
    assert result.returncode == 1 and "worker id" in result.stderr
