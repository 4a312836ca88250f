"""Request counts taken ahead in blocks (real database): the limits stay exact, the counts come back.

See :mod:`aiosd.daemon.access.allowance`. A controllable clock stands in for
time; the counter documents are the real ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from aiosd.daemon.access.allowance import AHEAD_MAX, IDLE, Allowances, Counter
from aiosd.daemon.access.authorizer import Admission, Ask, Meter, PolicyAuthorizer, PolicyLookup, Refused
from aiosd.daemon.access.counters import PERIOD_FIELDS, Counters, period_window, rate_window
from aiosd.daemon.access.directory import Directory
from aiosd.daemon.access.policy import Policy, RateLimit
from aiosd.sdk.protocol import Request, Usage
from aiosd.sdk.syscalls import CATALOGUE

from .admission import Clock, scratch_db
from .admission import asks as _asks


@pytest.fixture
def db() -> Iterator[Any]:
    yield from scratch_db("aiosd_allowance")


class CountingCounters(Counters):
    """The real counters, counting the conditional writes (one database round trip each)."""

    reserves = 0

    def reserve(self, key: str, amounts: dict[str, int], limits: dict[str, int | None], extra: Any) -> Any:
        self.reserves += 1
        return super().reserve(key, amounts, limits, extra)


def _counter(name: str = "ann:rate60:1") -> Counter:
    return Counter(name, "requests", ("requests",), {"agent": "ann", "kind": "rate"})


def _stored(db: Any, key: str) -> int:
    doc = db["counters"].find_one({"_id": key})
    return int(doc["requests"]) if doc else 0


def test_a_steady_agent_is_counted_in_blocks_and_the_rest_comes_back(db: Any) -> None:
    counters, clock = CountingCounters(db["counters"]), Clock()
    allowances, counter = Allowances(counters, clock), _counter()
    for _ in range(500):  # 100 calls a second
        assert allowances.take(counter, 1, 100_000)
        clock.now += 0.01
    assert counters.reserves <= 20, counters.reserves  # one write per block, not per call
    held = allowances.held()
    assert 0 < held <= AHEAD_MAX
    assert _stored(db, counter.key) == 500 + held  # ahead by the unused block only
    allowances.settle()  # used a moment ago: kept
    assert allowances.held() == held
    clock.now += IDLE
    allowances.settle()
    assert allowances.held() == 0 and _stored(db, counter.key) == 500


def test_an_occasional_caller_reserves_only_what_it_asks_for(db: Any) -> None:
    counters, clock = CountingCounters(db["counters"]), Clock()
    allowances, counter = Allowances(counters, clock), _counter()
    for _ in range(5):
        assert allowances.take(counter, 1, 100_000)
        clock.now += 30
    assert counters.reserves == 5 and allowances.held() == 0 and _stored(db, counter.key) == 5


def test_no_more_than_the_limit_is_admitted_and_one_scheduler_admits_all_of_it(db: Any) -> None:
    clock = Clock()
    allowances, counter = Allowances(Counters(db["counters"]), clock), _counter()

    def one(_: int) -> bool:
        clock.now += 0.001
        return allowances.take(counter, 1, 300)

    with ThreadPoolExecutor(8) as pool:
        taken = list(pool.map(one, range(500)))
    assert sum(taken) == 300 and allowances.held() == 0 and _stored(db, counter.key) == 300


def test_two_schedulers_never_pass_the_limit_and_together_use_all_of_it(db: Any) -> None:
    clock = Clock()
    first, second = Allowances(Counters(db["counters"]), clock), Allowances(Counters(db["counters"]), clock)
    counter, admitted, refused = _counter(), 0, set()
    for i in range(1000):
        holder = (first, second)[i % 2]
        if holder in refused:
            continue
        if holder.take(counter, 1, 400):
            admitted += 1
        else:
            refused.add(holder)  # a scheduler refuses only once its own block is spent
        clock.now += 0.002
    assert admitted == 400 and _stored(db, counter.key) == 400
    assert first.held() == second.held() == 0


def test_a_batch_that_does_not_fit_is_refused_whole_and_counts_nothing(db: Any) -> None:
    allowances, counter = Allowances(Counters(db["counters"]), Clock()), _counter()
    assert allowances.take(counter, 3, 5)
    assert not allowances.take(counter, 3, 5)
    assert allowances.take(counter, 2, 5)
    assert _stored(db, counter.key) == 5


def test_a_counter_without_a_limit_is_written_once_per_settle(db: Any) -> None:
    counters = CountingCounters(db["counters"])
    allowances = Allowances(counters, Clock())
    counter = Counter("ann:day:x", "requests", PERIOD_FIELDS, {"agent": "ann", "kind": "period"})
    for _ in range(50):
        assert allowances.take(counter, 2, None)
    allowances.give(counter, 1, None)
    assert counters.reserves == 0 and _stored(db, counter.key) == 0
    allowances.settle()
    doc = db["counters"].find_one({"_id": counter.key})
    assert doc is not None and doc["requests"] == 99 and doc["agent"] == "ann" and doc["prompt_tokens"] == 0


def _admission(db: Any, counters: Counters) -> tuple[Directory, Clock, Meter, PolicyAuthorizer]:
    """An agents' directory, a clock, and the meter and authorizer of one scheduler on ``counters``."""
    directory, clock = Directory(db["agents"]), Clock()
    policies = PolicyLookup(directory, clock=clock)
    meter = Meter(counters, policies, Allowances(counters, clock))
    return directory, clock, meter, PolicyAuthorizer(policies, meter)


def test_a_narrowed_limit_sees_only_the_calls_admitted(db: Any) -> None:
    """Blocks reserved under the old policy are given back before the new one admits anything."""
    directory, clock, _, authorizer = _admission(db, Counters(db["counters"]))
    directory.create("ann", Policy(rate_limit=RateLimit(requests=100_000, seconds=3600)), external=False)
    for _ in range(200):
        assert isinstance(authorizer.authorize_many(_asks("ann"))[0], Admission)
        clock.now += 0.06  # past the revision grace: each batch reads the revision
    window = rate_window("ann", 3600)
    assert _stored(db, window.key) > 200  # a block is held
    directory.update("ann", {"policy": Policy(rate_limit=RateLimit(requests=205, seconds=3600)).model_dump()})
    clock.now += 1
    verdicts = [authorizer.authorize_many(_asks("ann"))[0] for _ in range(10)]
    if rate_window("ann", 3600).key == window.key:  # not across an hour's boundary
        assert [isinstance(v, Admission) for v in verdicts] == [True] * 5 + [False] * 5
        refused = verdicts[-1]
        assert isinstance(refused, Refused) and refused.code.value == "rate_limited"
        assert _stored(db, window.key) == 205


def test_the_period_count_of_an_unlimited_agent_is_written_by_the_periodic_job(db: Any) -> None:
    counters = CountingCounters(db["counters"])
    directory, _, meter, authorizer = _admission(db, counters)
    directory.create("ann", Policy(rate_limit=None, requests_per_period=None), external=False)
    for _ in range(20):
        assert all(isinstance(v, Admission) for v in authorizer.authorize_many(_asks("ann", 3)))
    assert counters.reserves == 0
    meter.settle()
    assert _stored(db, period_window("ann", "day").key) == 60


def _chat(agent: str) -> list[Any]:
    request = Request(syscall="llm.chat", args={"messages": [{"role": "user", "content": "hi"}]})
    return [Ask(agent, request, CATALOGUE["llm.chat"].args.model_validate(request.args), 5)]


def _period_tokens(db: Any, agent: str) -> int:
    doc = db["counters"].find_one({"_id": period_window(agent, "day").key}) or {}
    return int(doc.get("prompt_tokens") or 0) + int(doc.get("completion_tokens") or 0)


def test_token_charges_are_written_before_admission_only_under_a_token_quota(db: Any) -> None:
    """An agent's answered tokens count before its next LLM call is admitted when a token quota needs them."""
    directory, _, meter, authorizer = _admission(db, Counters(db["counters"]))
    directory.create("ann", Policy(tokens_per_period=None, rate_limit=None, requests_per_period=None), external=False)
    directory.create("bob", Policy(tokens_per_period=100, rate_limit=None, requests_per_period=None), external=False)
    for agent in ("ann", "bob"):
        meter.charge_tokens(agent, Usage(prompt_tokens=60, completion_tokens=30))
    verdicts = authorizer.authorize_many(_chat("ann") + _chat("bob"))
    assert all(isinstance(v, Admission) for v in verdicts)  # bob's 90 tokens are under his 100
    assert (_period_tokens(db, "ann"), _period_tokens(db, "bob")) == (0, 90)  # ann's wait for the periodic job
    meter.charge_tokens("bob", Usage(completion_tokens=10))
    refused = authorizer.authorize_many(_chat("bob"))[0]
    assert isinstance(refused, Refused) and refused.code.value == "quota_exceeded"
    meter.settle()
    assert (_period_tokens(db, "ann"), _period_tokens(db, "bob")) == (90, 100)
