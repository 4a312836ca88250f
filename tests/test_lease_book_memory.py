"""A queued call costs the scheduler about a kibibyte: an overnight batch may queue 100k."""

from __future__ import annotations

import tracemalloc

from aiosd.daemon.leasing.book import LeaseBook
from aiosd.daemon.leasing.ordering import Priority
from aiosd.sdk.protocol import Usage

from .harness import World
from .unit.test_lease_book import _record

CALLS = 2000


def test_a_queued_call_costs_about_a_kibibyte(world: World) -> None:
    book = LeaseBook(world.db()["syscalls"], Priority().key)
    records = [_record(n, n % 10, agent=f"agent{n % 7}") for n in range(CALLS)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for record in records:
            book.enqueue(record)
        book.flush()  # the journal of transitions is written away; the book itself stays
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_call = sum(s.size_diff for s in after.compare_to(before, "filename")) / CALLS
    assert len(book) == CALLS
    assert per_call < 1100, f"{per_call:.0f} bytes per queued call"


def test_merged_transitions_are_written_as_one_valid_update(world: World) -> None:
    live = world.db()["syscalls"]
    record = _record(1)
    live.insert_one({**record, "state": "accepted"})
    book = LeaseBook(live, Priority().key)
    book.enqueue(record)
    entry = book.take(1)[0]
    lease_id = book.grant(entry, "w1", ttl=30)["lease"]["id"]  # type: ignore[index]
    book.requeue(entry["_id"], lease_id, usage=Usage(completion_tokens=5), run_ms=2.0)
    again = book.take(1)[0]
    book.grant(again, "w2", ttl=30)
    book.flush()  # one update for all four transitions; the server must accept it
    doc = live.find_one({"_id": record["_id"]})
    assert doc is not None and doc["state"] == "leased" and doc["lease"]["worker"] == "w2"
    assert (doc["attempts"], doc["run_ms"], doc["usage"]["completion_tokens"]) == (2, 2.0, 5)
