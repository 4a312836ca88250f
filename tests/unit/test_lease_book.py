"""The lease book in memory: order, leases, stale outcomes, caps and what a queued call costs."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
import pytest

from aiosd.daemon.leasing.book import LEASED, QUEUED, LeaseBook
from aiosd.daemon.leasing.endings import Ending, passing
from aiosd.daemon.leasing.fleet import Fleet
from aiosd.daemon.leasing.ordering import Priority
from aiosd.daemon.leasing.work import LeasedWork
from aiosd.daemon.pipeline.records import Envelope
from aiosd.sdk.protocol import Request, Usage

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def book() -> LeaseBook:
    # A collection that is never reached: these tests do not flush, read or load.
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient("mongodb://127.0.0.1:9/", connect=False)
    return LeaseBook(client["unused"]["syscalls"], Priority().key)


def _record(n: int, priority: int = 0, agent: str = "a", syscall: str = "llm.chat") -> dict[str, Any]:
    messages = [{"role": "system", "content": "You plan."}, {"role": "user", "content": "x" * 200}]
    return {
        "_id": f"{agent}/m{n}",
        "id": f"m{n}",
        "agent": agent,
        "syscall": syscall,
        "priority": priority,
        "args": {"model": "smol", "messages": messages},
        "queued_at": T0 + timedelta(seconds=n),
    }


def test_calls_come_out_in_the_orderings_order_and_only_once(book: LeaseBook) -> None:
    for n, prio in enumerate([0, 9, 5, 9]):
        assert book.enqueue(_record(n, prio))
    assert not book.enqueue(_record(1, 9))  # already in the book
    taken = book.take(10)
    assert [e["id"] for e in taken] == ["m1", "m3", "m2", "m0"]
    assert book.take(10) == []  # taken entries are out of the queue until put back
    book.put_back(taken[2:])
    assert [e["id"] for e in book.take(10)] == ["m2", "m0"]


def test_a_lease_settles_once_and_a_stale_lease_is_refused(book: LeaseBook) -> None:
    book.enqueue(_record(1))
    entry = book.take(1)[0]
    leased = book.grant(entry, "w1", ttl=30)
    assert leased is not None and leased["state"] == LEASED and leased["attempts"] == 1
    assert book.grant(entry, "w2", ttl=30) is None  # not queued any more
    lease_id = leased["lease"]["id"]
    assert book.settle(entry["_id"], "not-the-lease") is None
    settled = book.settle(entry["_id"], lease_id, Usage(prompt_tokens=3, completion_tokens=4), run_ms=5.0)
    assert settled is not None and settled["usage"]["completion_tokens"] == 4 and settled["slices"] == 1
    assert book.settle(entry["_id"], lease_id) is None and len(book) == 0  # first completion won


def test_a_requeued_call_goes_to_the_back_with_its_slices_and_usage(book: LeaseBook) -> None:
    book.enqueue(_record(1))
    book.enqueue(_record(2))
    first = book.take(1)[0]
    book.put_back(book.take(1))
    lease_id = book.grant(first, "w1", ttl=30)["lease"]["id"]  # type: ignore[index]
    again = book.requeue(first["_id"], lease_id, usage=Usage(completion_tokens=8), run_ms=1.0)
    assert again is not None and again["state"] == QUEUED and again["lease"] is None
    assert [e["id"] for e in book.take(5)] == ["m2", "m1"]  # same priority: the re-queued one is newest
    assert again["usage"]["completion_tokens"] == 8


def test_expired_leases_held_calls_and_caps_come_from_memory(book: LeaseBook) -> None:
    for n, agent in enumerate(["a", "a", "b"]):
        book.enqueue(_record(n, agent=agent))
    book.enqueue(_record(9, agent="a", syscall="tool.call"))
    for entry in book.take(10):
        book.grant(entry, "w1", ttl=-1 if entry["id"] == "m0" else 30)
    assert [e["id"] for e in book.expired()] == ["m0"]
    assert len(book.held_by("w1")) == 4 and book.held_by("w2") == []
    assert book.llm_calls_held() == {"a": 2, "b": 1}  # tool calls do not count against LLM caps
    assert book.give_up("a/m0", None) is None  # leased: giving up needs its lease
    lease_of_m0 = next(e["lease"]["id"] for e in book.held_by("w1") if e["id"] == "m0")
    assert book.give_up("a/m0", "stale") is None
    assert book.give_up("a/m0", lease_of_m0) is not None and len(book) == 3


def test_transitions_of_one_call_are_merged_into_one_pending_write(book: LeaseBook) -> None:
    book.enqueue(_record(1))
    entry = book.take(1)[0]
    lease_id = book.grant(entry, "w1", ttl=30)["lease"]["id"]  # type: ignore[index]
    book.requeue(entry["_id"], lease_id, usage=Usage(prompt_tokens=2), run_ms=1.5)
    pending = book._pending  # white box: what flush() would write
    assert list(pending) == [entry["_id"]]
    update = pending[entry["_id"]]
    assert update["$set"]["state"] == QUEUED and "lease" not in update["$set"] and "lease" in update["$unset"]
    # Fields the enqueue set are added to in place: one path is never both set and incremented.
    assert (update["$set"]["attempts"], update["$set"]["run_ms"], update["$set"]["usage"]["prompt_tokens"]) == (
        1,
        1.5,
        2,
    )
    assert not set(update["$inc"]) & {"attempts", "run_ms"} and not any(k.startswith("usage") for k in update["$inc"])


def test_a_call_answered_before_the_flush_costs_no_write(book: LeaseBook) -> None:
    book.enqueue(_record(1))
    book.enqueue(_record(2))
    first, second = book.take(2)
    lease_id = book.grant(first, "w1", ttl=30)["lease"]["id"]  # type: ignore[index]
    book.grant(second, "w1", ttl=30)
    assert book.settle(first["_id"], lease_id) is not None
    # white box: what flush() would write; the settled call's result is the record of its end
    assert list(book._pending) == [second["_id"]]
    assert book.give_up(second["_id"], second["lease"]["id"]) is not None and book._pending == {}


def test_a_call_whose_reply_is_on_its_way_is_not_queued_again(book: LeaseBook) -> None:
    """The recovery sweep may find the live record of a call answered while the store was away."""
    work = LeasedWork(book, Fleet(book._live, 1e9), book._live, None, lambda _f, _a: None, threading.Event(),  # type: ignore[arg-type]
                      lease_ttl=30, max_attempts=3)  # fmt: skip
    answered, fresh = _envelope(1), _envelope(2)
    book.enqueue(_record(1))
    entry = book.take(1)[0]
    lease_id = book.grant(entry, "w1", ttl=30)["lease"]["id"]  # type: ignore[index]
    assert work._taking(entry["_id"], lambda: None) is None and not work.ending(entry["_id"])  # a stale outcome
    ending = Ending(work._taking(entry["_id"], lambda: book.settle(entry["_id"], lease_id)))  # type: ignore[arg-type]
    assert work.ending(answered.key)
    work.submit(answered)
    work.submit(fresh)
    assert [e["id"] for e in book.take(10)] == ["m2"] and len(book) == 1
    work.endings.park([ending])
    assert work.endings.take() == [ending]
    work.endings.park([ending])
    work.submit(answered)  # parked: still ending
    work.endings.done(work.endings.take())
    work.submit(answered)  # committed after an outage: the sweep may have read its record just before
    assert work.ending(answered.key) and book.take(10) == [] and len(book) == 1


def test_a_session_calls_prompt_is_written_even_when_it_settles_before_the_flush(book: LeaseBook) -> None:
    prompt = [{"role": "user", "content": "earlier"}, {"role": "user", "content": "now"}]
    book.enqueue({**_record(1), "session": "s"}, prompt)
    entry = book.take(1)[0]
    lease_id = book.grant(entry, "w1", ttl=30)["lease"]["id"]  # type: ignore[index]
    assert book.settle(entry["_id"], lease_id) is not None
    assert book._pending[entry["_id"]]["$set"]["prompt"] == prompt  # a re-run after a crash must find it


def test_store_errors_that_pass_are_told_from_refusals() -> None:
    assert passing(pymongo.errors.AutoReconnect("gone")) and passing(pymongo.errors.InvalidOperation("closed"))
    assert passing(pymongo.errors.OperationFailure("election", code=189))
    assert passing(pymongo.errors.OperationFailure("x", code=2, details={"errorLabels": ["RetryableWriteError"]}))
    assert not passing(pymongo.errors.OperationFailure("bad value", code=2))
    assert not passing(pymongo.errors.DocumentTooLarge("too large")) and not passing(ValueError("bug"))


def _envelope(n: int) -> Envelope:
    request = Request(syscall="llm.chat", args={"model": "smol", "messages": [{"role": "user", "content": "hi"}]})
    return Envelope("a", f"m{n}", request, 0, None, f"c{n}", T0)
