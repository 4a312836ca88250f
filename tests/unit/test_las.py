"""``las``: program-level least attained service, its aging bound and its ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo

from aiosd.daemon.leasing.attained import LeastAttained, Ledger, program_of
from aiosd.daemon.leasing.book import LeaseBook
from aiosd.daemon.leasing.ordering import make_ordering
from aiosd.daemon.leasing.tuning import Tuning
from aiosd.sdk.protocol import Usage

T0 = datetime(2026, 1, 1, tzinfo=UTC)
#: 1000 weighted tokens weigh one second of waiting; nothing is pushed back more than 10 s.
TUNING = Tuning(prefill_weight=0.1, aging_rate=1000.0, starvation_bound=10.0)


def _call(name: str, queued_s: float, program: str | None = None, **fields: Any) -> dict[str, Any]:
    call = {"_id": name, "agent": "a", "queued_at": T0 + timedelta(seconds=queued_s), "program": program}
    call.update(fields)
    return call


def _names(calls: list[dict[str, Any]]) -> list[str]:
    return [c["_id"] for c in calls]


def test_the_program_with_less_attained_service_goes_first() -> None:
    las = LeastAttained(TUNING)
    las.charge(_call("x", 0, "long"), Usage(completion_tokens=3000))  # 3 s of push-back
    las.charge(_call("y", 0, "mid"), Usage(completion_tokens=1000))  # 1 s
    queued = [_call("long-1", 0, "long"), _call("mid-1", 1, "mid"), _call("new-1", 2.5, "new")]
    assert _names(las.order(queued)) == ["mid-1", "new-1", "long-1"]  # ranks 2.0, 2.5, 3.0


def test_service_weighs_computed_prompt_tokens_less_and_cached_ones_not_at_all() -> None:
    las = LeastAttained(TUNING)
    las.charge(_call("x", 0, "p"), Usage(prompt_tokens=5000, cached_tokens=4000, completion_tokens=50))
    assert las.attained(_call("y", 0, "p")) == 50 + 0.1 * 1000


def test_priority_is_a_hard_override() -> None:
    las = LeastAttained(TUNING)
    las.charge(_call("x", 0, "busy"), Usage(completion_tokens=10**9))
    queued = [_call("fresh-low", 0, "fresh", priority=0), _call("busy-high", 100, "busy", priority=9)]
    assert _names(las.order(queued)) == ["busy-high", "fresh-low"]


def test_aging_bound_a_call_is_never_passed_by_calls_queued_the_bound_or_more_after_it() -> None:
    las = LeastAttained(TUNING)
    las.charge(_call("x", 0, "hog"), Usage(completion_tokens=10**9))  # far beyond the bound
    hog = _call("hog-1", 0, "hog")
    just_inside = _call("fresh-inside", TUNING.starvation_bound - 0.001, "f1")
    at_bound = _call("fresh-at", TUNING.starvation_bound, "f2")
    later = _call("fresh-later", TUNING.starvation_bound + 5, "f3")
    assert _names(las.order([later, at_bound, hog, just_inside])) == [
        "fresh-inside",
        "hog-1",
        "fresh-at",
        "fresh-later",
    ]


def test_a_programs_calls_are_grouped_by_program_then_session_then_alone() -> None:
    assert program_of({"agent": "a", "program": "t1", "session": "s"}) == ("a", "program", "t1")
    assert program_of({"agent": "a", "program": None, "session": "s"}) == ("a", "session", "s")
    assert program_of({"agent": "a"}) is None
    # Two agents using the same program name are different programs.
    assert program_of({"agent": "a", "program": "main"}) != program_of({"agent": "b", "program": "main"})


def test_a_lone_call_ranks_by_its_own_earlier_slices() -> None:
    las = LeastAttained(TUNING)
    sliced = _call("sliced", 0, usage={"prompt_tokens": 0, "completion_tokens": 2000, "cached_tokens": 0})
    fresh = _call("fresh", 1)
    assert _names(las.order([sliced, fresh])) == ["fresh", "sliced"]
    las.charge(sliced, Usage(completion_tokens=2000))  # no program: the ledger is not touched
    assert len(las.ledger) == 0


def test_the_ledger_forgets_the_least_recently_charged_programs_first() -> None:
    ledger = Ledger(limit=2)
    ledger.add(("a", "program", "p1"), 10)
    ledger.add(("a", "program", "p2"), 20)
    ledger.add(("a", "program", "p1"), 5)  # p1 is now the most recent
    ledger.add(("a", "program", "p3"), 30)
    assert len(ledger) == 2
    assert ledger.get(("a", "program", "p2")) == 0  # forgotten: starts again like a new program
    assert (ledger.get(("a", "program", "p1")), ledger.get(("a", "program", "p3"))) == (15, 30)


def test_the_lease_book_charges_settled_calls_to_their_program() -> None:
    las = make_ordering("las", 0, TUNING)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient("mongodb://127.0.0.1:9/", connect=False)
    book = LeaseBook(client["unused"]["syscalls"], las.key, charge=las.charge)
    book.enqueue(_record("long/1", 0, "long"))
    entry = book.take(1)[0]
    lease = book.grant(entry, "w1", ttl=30)
    assert lease is not None
    book.settle(entry["_id"], lease["lease"]["id"], Usage(completion_tokens=5000))
    # The long program's next call was queued before a new program's first, but it has 5 s of service behind it.
    book.enqueue(_record("long/2", 1, "long"))
    book.enqueue(_record("short/1", 2, "short"))
    assert [e["_id"] for e in book.take(5)] == ["short/1", "long/2"]


def _record(key: str, queued_s: float, program: str) -> dict[str, Any]:
    return {
        "_id": key,
        "id": key,
        "agent": "a",
        "syscall": "llm.chat",
        "program": program,
        "args": {"messages": [{"role": "user", "content": "hi"}]},
        "queued_at": T0 + timedelta(seconds=queued_s),
    }
