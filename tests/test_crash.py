"""Crash recovery: kill -9 the scheduler mid-run; a new one finishes everything exactly once."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiosd.sdk import AsyncClient
from aiosd.sdk.protocol import Reply, Status

from .harness import (
    SchedulerProcess,
    World,
    completed_count,
    completed_records,
    unfinished_count,
)

CALLS = 500
REPLY_TIMEOUT = 180.0


def content(n: int) -> str:
    return f"load note {n:04d}"


class Calls:
    """``count`` memory.add syscalls made at once from one AsyncClient on a background thread.

    Each call waits for its reply; ``arrived`` lists the replies as they come in,
    so a test can kill or stop schedulers meanwhile and then inspect the outcome.
    """

    def __init__(self, world: World, count: int = CALLS) -> None:
        self.count = count
        self.arrived: list[Reply] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(world,), daemon=True)
        self._thread.start()

    def _run(self, world: World) -> None:
        try:
            asyncio.run(self._scenario(world))
        except BaseException as exc:
            self.error = exc

    async def _scenario(self, world: World) -> None:
        async with AsyncClient(world.amqp_url(), timeout=REPLY_TIMEOUT) as client:

            async def one(n: int) -> None:
                args = {"content": content(n), "tags": ["load"]}
                self.arrived.append(await client.request("memory.add", args, message_id=f"call-{n:04d}"))

            await asyncio.gather(*(one(n) for n in range(self.count)))

    def wait_for_replies(self, at_least: int, timeout: float = 120.0) -> None:
        """Return once ``at_least`` replies have arrived: read in memory, so a test reacts within milliseconds."""
        deadline = time.monotonic() + timeout
        while len(self.arrived) < at_least:
            assert time.monotonic() < deadline, f"only {len(self.arrived)} replies in {timeout}s"
            assert self._thread.is_alive() or self.error is None, self.error
            time.sleep(0.002)

    def result(self, timeout: float = REPLY_TIMEOUT + 30) -> list[Reply]:
        """Wait for every call to end; return the replies (raises the first client error)."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the clients are still waiting: {len(self.arrived)}/{self.count} replies"
        if self.error is not None:
            raise self.error
        return self.arrived


def completed(world: World) -> int:
    return completed_count(world.db())


def wait_for_completed(world: World, at_least: int, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while (done := completed(world)) < at_least:
        assert time.monotonic() < deadline, f"only {done} syscalls completed in {timeout}s"
        time.sleep(0.02)
    return done


def assert_all_done_exactly_once(world: World, replies: list[Reply], count: int = CALLS) -> None:
    """Every call answered ok, one record each, one note each."""
    assert len(replies) == count
    failed = [(r.id, r.error) for r in replies if r.status != Status.OK]
    assert not failed, failed
    assert sorted(r.id for r in replies) == [f"call-{n:04d}" for n in range(count)]

    db = world.db()
    assert unfinished_count(db) == 0
    records = completed_records(db)
    ids = [r["id"] for r in records]
    assert len(ids) == count and len(set(ids)) == count, "each syscall must have exactly one record"
    assert all(r["state"] == "completed" for r in records)
    assert all(r["reply"] and r["reply"]["status"] == "ok" for r in records)

    notes = list(db["memory"].find({}))
    assert len(notes) == count, f"{len(notes)} notes for {count} memory.add calls"
    by_id: dict[str, Any] = {n["_id"]: n for n in notes}
    assert sorted(n["content"] for n in notes) == [content(n) for n in range(count)]
    # Each reply names the note its own call created.
    for reply in replies:
        note = by_id[reply.result["id"]]
        assert note["content"] == content(int(reply.id.split("-")[1]))
    for record in records:
        assert by_id[record["reply"]["result"]["id"]]["content"] == record["args"]["content"]

    # The audit log never shows a syscall accepted or completed twice. (A crash
    # between two writes may leave an entry out, so "at most once" is the guarantee.)
    audit = Counter(
        (a["message_id"], a["decision"]) for a in db["audit"].find({"decision": {"$in": ["accepted", "completed"]}})
    )
    twice = {key: n for key, n in audit.items() if n > 1}
    assert not twice, twice

    # Once every reply is out, no live record is left behind (each is retired
    # by the task that follows its reply's publication, so allow it a moment).
    deadline = time.monotonic() + 30
    while (live := db["syscalls"].count_documents({})) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live == 0, list(db["syscalls"].find({}, {"state": 1}))


def test_kill_9_mid_run_loses_nothing_and_repeats_nothing(
    world: World, make_scheduler: Callable[..., SchedulerProcess]
) -> None:
    first = make_scheduler().start()
    calls = Calls(world)

    # Killed on the first replies seen by the client, not on a poll of the database:
    # a scheduler committing 64 calls at a time could finish the rest between two polls.
    calls.wait_for_replies(50)
    first.signal(signal.SIGKILL)
    assert first.wait(30) == -signal.SIGKILL
    at_crash = completed(world)
    assert at_crash < CALLS, "the scheduler finished everything before it was killed; nothing was tested"

    make_scheduler().start()
    replies = calls.result()
    assert_all_done_exactly_once(world, replies)
