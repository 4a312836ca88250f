"""A queued call costs the scheduler about a kibibyte: an overnight batch may queue 100k."""

from __future__ import annotations

import tracemalloc

import pytest

from aiosd.daemon.leasing import book as book_module
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


def test_live_records_of_calls_in_flight_are_served_from_memory_within_the_bound(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = world.db()["syscalls"]
    first, second, third = _record(1), _record(2), _record(3)
    for record in (first, second, third):
        live.insert_one({**record, "state": "accepted", "where": "database"})
    book = LeaseBook(live, Priority().key)
    book.enqueue(first, live={**first, "where": "memory"})
    monkeypatch.setattr(book_module, "HOT_BYTES", book.hot_bytes() * 2 + 10)  # room for two of the three
    for record in (second, third):
        book.enqueue(record, live={**record, "where": "memory"})
    found = book.read([first["_id"], second["_id"], third["_id"]])
    assert [found[r["_id"]]["where"] for r in (first, second, third)] == ["memory", "memory", "database"]
    assert book.read([first["_id"]], ended=True)[first["_id"]]["where"] == "memory"
    assert book.read([first["_id"]])[first["_id"]]["where"] == "database"  # the reply took it out of memory
    # A call that leaves the book without its reply reading it is dropped from memory two flushes on.
    taken = book.take(3)
    entry = next(e for e in taken if e["_id"] == second["_id"])
    book.put_back([e for e in taken if e is not entry])
    lease = book.grant(entry, "w1", ttl=30)
    assert lease is not None
    book.settle(entry["_id"], lease["lease"]["id"])
    left = book.hot_bytes()
    book.flush()
    assert book.hot_bytes() == left
    book.flush()
    assert book.hot_bytes() < left and book.read([entry["_id"]])[entry["_id"]]["where"] == "database"
