"""Priorities: a backlog waiting in the ingress queue is served highest priority first."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from aiosd.daemon.transport.broker import declare_topology
from aiosd.sdk import Client
from aiosd.sdk.protocol import INGRESS_QUEUE, Reply, Status

from .harness import SchedulerProcess, World, completed_records

LOW, HIGH = 30, 5


def ready_messages(world: World) -> int:
    """Messages ready in the ingress queue, exact (a passive declare, not the lagging stats)."""
    conn = world.pika()
    try:
        return int(conn.channel().queue_declare(INGRESS_QUEUE, passive=True).method.message_count)
    finally:
        conn.close()


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_backlog_is_served_highest_priority_first(
    world: World, make_scheduler: Callable[..., SchedulerProcess]
) -> None:
    conn = world.pika()
    declare_topology(conn.channel())
    conn.close()

    with Client(world.amqp_url(), timeout=120) as client, ThreadPoolExecutor(LOW + HIGH) as pool:

        def send(priority: int, n: int) -> Future[Reply]:
            return pool.submit(
                client.request,
                "memory.add",
                {"content": f"p{priority} #{n}"},
                priority=priority,
                message_id=f"p{priority}-{n}",
            )

        low = [send(0, n) for n in range(LOW)]
        wait_until("the low-priority backlog", lambda: ready_messages(world) == LOW)
        high = [send(9, n) for n in range(HIGH)]
        wait_until("the high-priority calls", lambda: ready_messages(world) == LOW + HIGH)

        make_scheduler(prefetch=1, threads=1).start()
        replies = [f.result(timeout=150) for f in low + high]

    assert all(r.status == Status.OK for r in replies), [r.error for r in replies if r.error]
    records = completed_records(world.db())
    assert len(records) == LOW + HIGH
    by_priority = {p: [r for r in records if r["priority"] == p] for p in (0, 9)}
    assert (len(by_priority[0]), len(by_priority[9])) == (LOW, HIGH)

    # Every priority-9 call finished before any priority-0 call did, although all
    # of them were queued after the whole priority-0 backlog.
    last_high = max(r["completed_at"] for r in by_priority[9])
    first_low = min(r["completed_at"] for r in by_priority[0])
    order = [r["id"] for r in sorted(records, key=lambda r: r["completed_at"])]
    assert last_high <= first_low, f"completion order: {order}"
