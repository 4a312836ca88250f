"""``fair``: weighted fair share per agent, its aging bound, and the lease book keying a call once."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo

from aiosd.daemon.access.policy import Policy
from aiosd.daemon.leasing.book import LeaseBook
from aiosd.daemon.leasing.fairshare import FairShare, policy_weights
from aiosd.daemon.leasing.prefixes import Shape
from aiosd.daemon.leasing.tuning import Tuning
from aiosd.sdk.protocol import Usage

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TUNING = Tuning(prefill_weight=0.0, aging_rate=1000.0, starvation_bound=30.0)
#: Every call below is estimated at 100 tokens of service (no prompt, max_tokens 100).
COST = 100


def _call(name: str, agent: str, queued_s: float = 0.0, priority: int = 0) -> dict[str, Any]:
    return {
        "_id": name,
        "agent": agent,
        "priority": priority,
        "queued_at": T0 + timedelta(seconds=queued_s),
        "shape": Shape(max_tokens=COST),
    }


def _agents(calls: list[dict[str, Any]]) -> list[str]:
    return [c["agent"] for c in calls]


def test_backlogged_agents_get_calls_in_proportion_to_their_weights() -> None:
    fair = FairShare(TUNING, {"heavy": 2.0, "light": 1.0}.__getitem__)
    queued = [_call(f"l{i}", "light") for i in range(30)] + [_call(f"h{i}", "heavy") for i in range(30)]
    first = fair.order(queued)[:30]
    assert Counter(_agents(first)) == {"heavy": 20, "light": 10}


def test_an_agent_with_nothing_queued_is_served_before_a_flooding_agents_backlog() -> None:
    fair = FairShare(TUNING)
    flood = [_call(f"f{i}", "flood", queued_s=0) for i in range(50)]
    keys = {c["_id"]: fair.key(c) for c in flood}  # the flood spreads out: 0.1 s per call
    for call in flood[:5]:  # five of the flood went out
        fair.granted(call)
    newcomer = _call("n", "newcomer", queued_s=0.5)
    keys["n"] = fair.key(newcomer)
    order = sorted([*flood[5:], newcomer], key=lambda c: keys[c["_id"]])
    assert order.index(newcomer) <= 1  # only the flood's call ranked with it may still go first


def test_an_idle_agent_gets_no_credit_for_its_idle_time() -> None:
    fair = FairShare(TUNING)
    busy = [_call(f"b{i}", "busy") for i in range(10)]
    for call in busy:
        fair.key(call)
        fair.granted(call)
    assert fair.finish_tag("idle") == fair.vtime == 9 * COST  # starts where the fleet is, not at zero
    late = _call("late", "idle", queued_s=1)
    fair.key(late)
    assert late["shape"].tag == fair.vtime


def test_priority_is_a_hard_override() -> None:
    fair = FairShare(TUNING, {"vip": 0.001, "batch": 1000.0}.__getitem__)
    queued = [_call("batch", "batch", priority=0), _call("vip", "vip", queued_s=60, priority=9)]
    assert [c["_id"] for c in fair.order(queued)] == ["vip", "batch"]


def test_aging_bound_a_call_is_never_passed_by_calls_queued_the_bound_or_more_after_it() -> None:
    fair = FairShare(TUNING)
    hog = [_call(f"h{i}", "hog") for i in range(1000)]  # 100k tokens ahead: far beyond the bound
    keys = [fair.key(call) for call in hog]
    last = hog[-1]
    assert keys[-1][1] == last["queued_at"].timestamp() + TUNING.starvation_bound
    other = _call("other", "other", queued_s=TUNING.starvation_bound)
    assert fair.key(other) >= keys[-1]  # queued the bound after: it does not pass the hog's last call
    inside = _call("inside", "third", queued_s=TUNING.starvation_bound - 1)
    assert fair.key(inside) < keys[-1]


def test_usage_replaces_the_reservation() -> None:
    fair = FairShare(TUNING)
    call = _call("c", "a")
    fair.key(call)
    assert fair.finish_tag("a") == COST  # reserved when queued
    fair.charge(call, Usage(completion_tokens=30))
    assert fair.finish_tag("a") == 30
    fair.charge(call, Usage(completion_tokens=10))  # a later slice: charged in full
    assert fair.finish_tag("a") == 40


def test_weights_come_from_the_agents_policies() -> None:
    class Lookup:
        def standing(self, agent: str) -> Any:
            class Standing:
                policy = Policy(weight=3.0)

            return Standing() if agent == "known" else None

    weight_of = policy_weights(Lookup())  # type: ignore[arg-type]
    assert (weight_of("known"), weight_of("unknown")) == (3.0, 1.0)
    assert Policy().weight == 1.0


def test_a_call_put_back_unleased_keeps_its_place_and_is_not_reserved_twice() -> None:
    fair = FairShare(TUNING)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient("mongodb://127.0.0.1:9/", connect=False)
    book = LeaseBook(client["unused"]["syscalls"], fair.key, charge=fair.charge)
    record = {
        "_id": "a/1",
        "id": "1",
        "agent": "a",
        "syscall": "llm.chat",
        "args": {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": COST},
        "queued_at": T0,
    }
    book.enqueue(record)
    reserved = fair.finish_tag("a")
    assert reserved == COST
    book.put_back(book.take(1))
    assert fair.finish_tag("a") == reserved
    entry = book.take(1)[0]
    lease = book.grant(entry, "w1", ttl=30)
    assert lease is not None
    book.settle(entry["_id"], lease["lease"]["id"], Usage(completion_tokens=7))
    assert fair.finish_tag("a") == 7
