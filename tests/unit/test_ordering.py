"""Ordering policies: the order in which queued leased calls are handed out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aiosd.daemon.leasing.ordering import Fifo, Priority, RoundRobin, make_ordering

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _call(name: str, queued_s: int, priority: int = 0) -> dict[str, object]:
    return {"_id": name, "queued_at": T0 + timedelta(seconds=queued_s), "priority": priority}


def _names(docs: list[dict[str, object]]) -> list[object]:
    return [d["_id"] for d in docs]


def test_fifo_serves_the_oldest_first() -> None:
    queued = [_call("b", 2, priority=9), _call("a", 1), _call("c", 3)]
    assert _names(Fifo().order(queued)) == ["a", "b", "c"]


def test_priority_serves_nine_before_zero_and_fifo_within_a_priority() -> None:
    queued = [_call("low-old", 1, 0), _call("high-new", 5, 9), _call("mid", 2, 5), _call("high-old", 3, 9)]
    assert _names(Priority().order(queued)) == ["high-old", "high-new", "mid", "low-old"]


def test_priority_treats_a_missing_priority_as_zero() -> None:
    queued = [{"_id": "none", "queued_at": T0}, _call("one", 9, 1)]
    assert _names(Priority().order(queued)) == ["one", "none"]


def test_round_robin_is_fifo_with_time_slices() -> None:
    policy = RoundRobin(slice_tokens=32)
    assert policy.slice_tokens == 32
    assert _names(policy.order([_call("b", 2), _call("a", 1)])) == ["a", "b"]
    assert Fifo().slice_tokens is None and Priority().slice_tokens is None


def test_the_heap_key_and_the_order_agree() -> None:
    # The lease book keeps a heap by `key`; `order` is the same order over a list.
    queued = [_call("c", 3, 1), _call("a", 1, 1), _call("b", 2, 9)]
    for policy in (Fifo(), Priority()):
        assert _names(policy.order(queued)) == _names(sorted(queued, key=policy.key))


def test_make_ordering_names_every_policy_and_refuses_others() -> None:
    assert isinstance(make_ordering("fifo", 0), Fifo)
    assert isinstance(make_ordering("priority", 0), Priority)
    rr = make_ordering("round_robin", 64)
    assert isinstance(rr, RoundRobin) and rr.slice_tokens == 64
    with pytest.raises(ValueError, match="unknown scheduling policy"):
        make_ordering("lottery", 0)
