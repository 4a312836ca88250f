"""A queued call costs the scheduler about a kibibyte: an overnight batch may queue 100k."""

from __future__ import annotations

import tracemalloc

from aiosd.daemon.leasing.book import LeaseBook
from aiosd.daemon.leasing.ordering import Priority

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
