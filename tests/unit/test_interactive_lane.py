"""The interactive lane of cache-aware routing: workers kept clear of batch work while interactive calls are about."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

from aiosd.daemon.leasing.book import LeaseBook
from aiosd.daemon.leasing.cacherouting import CacheRouter
from aiosd.daemon.leasing.dispatcher import Dispatcher
from aiosd.daemon.leasing.fleet import Fleet, Member
from aiosd.daemon.leasing.ordering import make_ordering
from aiosd.daemon.leasing.prefixes import shape_of
from aiosd.daemon.leasing.tuning import Tuning
from aiosd.daemon.leasing.work import LeasedWork
from aiosd.sdk.cluster import WorkerState
from aiosd.sdk.protocol import utcnow

SYSTEM = "You summarise records for the nightly report. " * 150  # ~7,000 characters: a cached prefix
#: The lane alone (no standby): it reserves the least busy worker when it opens.
TUNING = Tuning(
    route_balance_tokens=1e9,
    route_cache_tokens=100_000,
    interactive_workers=1,
    interactive_window=10.0,
    interactive_standby_tokens=0,
)
#: With a standby: while the lane is closed, the worker next in line takes only calls with little to compute.
STANDBY = replace(TUNING, interactive_standby_tokens=1024)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _members(*names: str, capacity: int = 4, model: str = "m") -> dict[str, Member]:
    return {
        n: Member(WorkerState(worker_id=n, host="h", backend="b", model=model, capacity=capacity), last_seen=0.0)
        for n in names
    }


def _call(key: str, *, priority: int = 0, system: str = SYSTEM, model: str = "m") -> dict[str, Any]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": f"task {key}"}]
    return {
        "_id": key,
        "agent": "a",
        "syscall": "llm.chat",
        "kind": "llm",
        "priority": priority,
        "program": None,
        "args": {"model": model},
        "shape": shape_of(messages, 100),
    }


def _lease(router: CacheRouter, call: dict[str, Any], members: dict[str, Member]) -> str | None:
    """What the dispatcher does: choose, grant (the lease counts on the member), tell the router."""
    worker = router.choose(call, members)
    if worker is not None:
        call["lease"] = {"id": f"lease-{call['_id']}"}
        members[worker].leases.add(call["lease"]["id"])
        router.served(call, worker)
    return worker


def _settle(members: dict[str, Member], *keys: str) -> None:
    for member in members.values():
        member.leases -= {f"lease-{k}" for k in keys}


def _router(tuning: Tuning = TUNING) -> tuple[CacheRouter, Clock]:
    clock = Clock()
    return CacheRouter(tuning, clock), clock


def test_without_interactive_calls_every_worker_serves_the_batch() -> None:
    router, _ = _router()
    members = _members("w1", "w2", "w3")
    router.begin(members)
    placed = {_lease(router, _call(f"b{n}", system=f"batch type {n} " * 400), members) for n in range(3)}
    assert placed == {"w1", "w2", "w3"}  # spread over all three: nothing reserved


def test_an_interactive_call_opens_the_lane_on_the_least_loaded_worker_and_goes_there() -> None:
    router, _ = _router()
    members = _members("w1", "w2", "w3")
    router.begin(members)
    for n, worker in enumerate(("w1", "w1", "w3")):  # w2 holds nothing
        call = _call(f"b{n}", system=f"batch type {n} " * 400)
        call["lease"] = {"id": f"lease-b{n}"}
        members[worker].leases.add(call["lease"]["id"])
        router.served(call, worker)
    assert _lease(router, _call("i1", priority=9), members) == "w2"
    assert router.reserved == {"w2"}
    # The next interactive call follows it there, although its own prefix is cached on w1.
    desk = "You are the help desk. " * 300
    router.served(_call("warm", system=desk), "w1")
    assert _lease(router, _call("i2", priority=9, system=desk), members) == "w2"


def test_the_lane_avoids_a_worker_that_was_just_given_a_long_prompt_to_compute() -> None:
    def fleet(clock: Clock, router: CacheRouter) -> dict[str, Member]:
        members = _members("w1", "w2", capacity=16)
        router.begin(members)
        for n in range(8):  # eight small calls on w1: more outstanding load than w2 will have
            call = _call(f"b{n}", system=f"batch type {n} " * 100)
            call["lease"] = {"id": f"lease-b{n}"}
            members["w1"].leases.add(call["lease"]["id"])
            router.served(call, "w1")
        clock.now += 2.0
        long = _call("agent", system="a long agent prompt " * 1500)  # ~7,500 tokens to compute
        long["lease"] = {"id": "lease-agent"}
        members["w2"].leases.add("lease-agent")
        router.served(long, "w2")
        return members

    router, clock = _router()
    members = fleet(clock, router)
    assert router._busy("w1")[1] > router._busy("w2")[1]  # w2 holds less load...
    assert _lease(router, _call("i1", priority=9), members) == "w1"  # ...but is probably computing that prompt
    router, clock = _router()
    members = fleet(clock, router)
    clock.now += 2.0  # a while later it has computed it: the least loaded is reserved
    router.begin(members)
    assert _lease(router, _call("i1", priority=9), members) == "w2"


def test_while_the_lane_is_open_other_calls_stay_off_the_reserved_worker() -> None:
    router, _ = _router()
    members = _members("w1", "w2")
    router.begin(members)
    lane = _lease(router, _call("i1", priority=9), members)
    other = next(w for w in members if w != lane)
    _settle(members, "i1")
    router.begin(members)
    # Its prefix is cached on the reserved worker, which has room: it still goes to the other one.
    assert router.choose(_call("b1", priority=8), members) == other
    for n in range(4):  # fill the other worker
        assert _lease(router, _call(f"b{n}", system=f"batch type {n} " * 400), members) == other
    assert router.choose(_call("b9"), members) is None  # it waits rather than take the reserved worker
    assert router.choose(_call("i2", priority=9), members) == lane


def test_an_interactive_call_falls_back_to_the_usual_rule_when_its_lane_is_full() -> None:
    router, _ = _router()
    members = _members("w1", "w2", capacity=1)
    router.begin(members)
    lane = _lease(router, _call("i1", priority=9), members)
    other = next(w for w in members if w != lane)
    assert _lease(router, _call("i2", priority=9, system="another desk " * 400), members) == other


def test_the_reserved_worker_stays_the_same_while_the_lane_is_open() -> None:
    router, clock = _router()
    members = _members("w1", "w2", "w3")
    router.begin(members)
    lane = _lease(router, _call("i1", priority=9), members)
    _settle(members, "i1")
    others = [w for w in members if w != lane]
    for n in range(4):  # the others get loaded; the reserved worker is now the least loaded by far
        _lease(router, _call(f"b{n}", system=f"batch type {n} " * 400), members)
    assert all(len(members[w].leases) == 2 for w in others)
    for step in range(5):
        clock.now += 3.0  # an interactive call every 3 s keeps it open
        router.begin(members)
        assert _lease(router, _call(f"i{step + 2}", priority=9), members) == lane
        _settle(members, f"i{step + 2}")
        assert _lease(router, _call(f"x{step}", system=f"other {step} " * 400), members) in others
        _settle(members, f"x{step}")


def test_the_lane_closes_after_the_window_and_stays_open_while_an_interactive_call_runs() -> None:
    router, clock = _router()
    members = _members("w1", "w2")
    router.begin(members)
    lane = _lease(router, _call("i1", priority=9), members)
    clock.now += 30.0  # i1 still runs: the lane stays open
    router.begin(members)
    assert router.choose(_call("b1"), members) != lane
    _settle(members, "i1")
    clock.now += 9.0  # within the window of its last sight
    router.begin(members)
    assert router.choose(_call("b2"), members) != lane
    clock.now += 2.0  # past it: every worker serves the batch again
    router.begin(members)
    assert router.choose(_call("b3"), members) == lane  # its prefix is cached there
    assert router.reserved == frozenset()


def test_a_lone_worker_is_never_reserved() -> None:
    router, _ = _router(Tuning(interactive_workers=3))
    members = _members("only")
    router.begin(members)
    assert _lease(router, _call("i1", priority=9), members) == "only"
    assert _lease(router, _call("b1"), members) == "only"
    # With two workers and three wanted, one is reserved and one still serves the rest.
    router, _ = _router(Tuning(interactive_workers=3))
    members = _members("w1", "w2")
    router.begin(members)
    lane = _lease(router, _call("i1", priority=9), members)
    assert {_lease(router, _call(f"b{n}"), members) for n in range(3)} == {next(w for w in members if w != lane)}


def test_a_reserved_worker_that_leaves_is_replaced_and_lanes_are_per_model() -> None:
    router, _ = _router()
    members = {**_members("w1", "w2", "w3"), **_members("n1", model="n")}
    router.begin(members)
    lane = _lease(router, _call("i1", priority=9), members)
    assert lane in {"w1", "w2", "w3"}
    # The only worker of model n is not reserved; a model-m lane does not touch it.
    assert _lease(router, _call("other-model", model="n"), members) == "n1"
    _settle(members, "i1")
    del members[lane]
    router.begin(members)
    replacement = _lease(router, _call("i2", priority=9), members)
    assert replacement != lane
    _settle(members, "i2")
    router.begin(members)
    assert router.choose(_call("b1"), members) not in {replacement, lane}


def test_zero_interactive_workers_turns_the_lane_off() -> None:
    router, _ = _router(Tuning(route_cache_tokens=100_000, interactive_workers=0))
    members = _members("w1", "w2")
    router.begin(members)
    home = _lease(router, _call("i1", priority=9), members)
    _settle(members, "i1")
    router.begin(members)
    assert router.choose(_call("b1"), members) == home  # its cached prefix wins, as without a lane


def test_the_interactive_priority_sets_what_counts_as_interactive() -> None:
    router, _ = _router(Tuning(route_cache_tokens=100_000, interactive_priority=5))
    members = _members("w1", "w2")
    router.begin(members)
    lane = _lease(router, _call("p5", priority=5), members)
    _settle(members, "p5")
    router.begin(members)
    assert router.choose(_call("p4", priority=4), members) != lane
    assert router.choose(_call("p7", priority=7, system="a different desk " * 400), members) == lane


def test_the_other_calls_on_a_newly_reserved_worker_are_taken_back_once() -> None:
    router, clock = _router()
    members = _members("w1", "w2")
    router.begin(members)
    for n, worker in enumerate(("w1", "w1", "w2")):  # w2 is the least loaded
        call = _call(f"b{n}", system=f"batch type {n} " * 400)
        call["lease"] = {"id": f"lease-b{n}"}
        members[worker].leases.add(call["lease"]["id"])
        router.served(call, worker)
    assert router.preempted() == {}  # no lane yet
    assert _lease(router, _call("i1", priority=9), members) == "w2"
    assert router.preempted() == {"w2": ["lease-b2"]}  # not the interactive call itself
    assert router.preempted() == {}  # once: the worker stays reserved, nothing new runs there
    _settle(members, "i1", "b2")
    clock.now += 11.0
    router.begin(members)  # closed: w2 serves the batch again
    assert _lease(router, _call("b3", system="batch type 3 " * 400), members) == "w2"
    router.begin(members)
    # Reopened, on the worker not given a prompt to compute just now: w2 is probably in b3's prefill.
    assert _lease(router, _call("i2", priority=9), members) == "w1"
    assert router.preempted() == {"w1": ["lease-b0", "lease-b1"]}


def test_without_preemption_nothing_is_taken_back() -> None:
    tuning = Tuning(route_cache_tokens=100_000, interactive_preempt=False, interactive_standby_tokens=0)
    router, _ = _router(tuning)
    members = _members("w1", "w2")
    router.begin(members)
    _lease(router, _call("b1"), members)
    _lease(router, _call("b2", system="batch type 2 " * 400), members)
    _lease(router, _call("i1", priority=9), members)
    assert router.reserved and router.preempted() == {}


def _closed_after_use(router: CacheRouter, clock: Clock, members: dict[str, Member]) -> str:
    """Open the lane with one interactive call, let it close; the worker on standby."""
    router.begin(members)
    assert not router._lane.standby  # no interactive call yet: nothing stands by
    _lease(router, _call("i0", priority=9), members)
    _settle(members, "i0")
    clock.now += 11.0
    router.begin(members)
    [standby] = router._lane.standby
    return standby


def test_while_the_lane_is_closed_the_worker_next_in_line_takes_only_calls_with_little_to_compute() -> None:
    router, clock = _router(STANDBY)
    members = _members("w1", "w2", "w3", capacity=16)
    standby = _closed_after_use(router, clock, members)
    long = [_call(f"long{n}", system=f"agent type {n} " * 800) for n in range(6)]  # ~2,800 tokens each
    assert standby not in {_lease(router, call, members) for call in long}
    # A short prompt goes there, and so does a long one whose prefix it holds (little left to compute).
    assert _lease(router, _call("short", system="a short desk prompt"), members) == standby
    router.served(_call("warm", system="agent type 9 " * 800), standby)
    assert _lease(router, _call("cached", system="agent type 9 " * 800), members) == standby
    # Its lane opens on it: nothing long is in flight there.
    assert _lease(router, _call("i1", priority=9), members) == standby
    assert router.reserved == {standby} and not router._lane.standby
    assert sorted(router.preempted()[standby]) == ["lease-cached", "lease-short"]


def test_a_long_call_waits_rather_than_take_the_standby_worker_and_nothing_else_changes_without_one() -> None:
    router, clock = _router(STANDBY)
    members = _members("w1", "w2", capacity=1)
    standby = _closed_after_use(router, clock, members)
    other = next(w for w in members if w != standby)
    assert _lease(router, _call("long1", system="agent type 1 " * 800), members) == other
    assert router.choose(_call("long2", system="agent type 2 " * 800), members) is None
    assert router.choose(_call("short", system="a short desk prompt"), members) == standby
    router, _ = _router(TUNING)  # no standby: every worker takes every call
    members = _members("w1", "w2", capacity=1)
    router.begin(members)
    assert not router._lane.standby
    placed = {_lease(router, _call(f"long{n}", system=f"agent type {n} " * 800), members) for n in range(2)}
    assert placed == {"w1", "w2"}


def test_when_the_lane_closes_its_worker_is_next_in_line() -> None:
    router, clock = _router(STANDBY)
    members = _members("w1", "w2", "w3", capacity=16)
    first = _closed_after_use(router, clock, members)
    assert _lease(router, _call("i1", priority=9), members) == first
    _settle(members, "i1")
    clock.now += 5.0
    router.begin(members)
    assert router.reserved == {first} and not router._lane.standby
    clock.now += 6.0
    router.begin(members)  # closed: the worker that ran only interactive calls stands by
    assert not router.reserved and router._lane.standby == {first}
    members.pop(first)  # it leaves: another takes its place
    router.begin(members)
    assert len(router._lane.standby) == 1 and first not in router._lane.standby


def test_expected_interactive_calls_open_the_lane_before_any_call_is_placed() -> None:
    router, _ = _router(TUNING)
    members = _members("w1", "w2", capacity=16)
    router.begin(members)
    batch, interactive = _call("b1"), _call("i1", priority=9)
    router.expect([batch, interactive])  # in fifo order the batch call comes first
    lane = next(iter(router.reserved))
    assert _lease(router, batch, members) != lane
    assert _lease(router, interactive, members) == lane


class _Records:
    """Enough of a pymongo collection for the book and the fleet: live records by key, writes dropped."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    def find(self, query: dict[str, Any], *_: Any) -> Iterator[dict[str, Any]]:
        return iter([self.docs[k] for k in query.get("_id", {}).get("$in", []) if k in self.docs])

    def bulk_write(self, *_: Any, **__: Any) -> None: ...

    def replace_one(self, *_: Any, **__: Any) -> None: ...

    def update_one(self, *_: Any, **__: Any) -> None: ...


def test_an_interactive_call_is_leased_in_the_round_its_lane_opens_behind_the_revoke_even_on_a_full_fleet() -> None:
    live = _Records()
    ordering = make_ordering("las", 64, TUNING)
    book = LeaseBook(live, ordering.key)  # type: ignore[arg-type]
    fleet = Fleet(live, timeout=1e9)  # type: ignore[arg-type]
    for name in ("w1", "w2"):
        fleet.heartbeat(WorkerState(worker_id=name, host="h", backend="b", model="m", capacity=2))
    wake = threading.Event()
    work = LeasedWork(book, fleet, live, None, lambda _f, _a: None, wake, lease_ttl=30, max_attempts=3)  # type: ignore[arg-type]
    sent: list[tuple[str, dict[str, Any]]] = []
    dispatcher = Dispatcher(
        work, ordering, CacheRouter(TUNING), lambda w, body: sent.append((w, json.loads(body))), wake, lease_ttl=30
    )

    def queue(key: str, priority: int, n: int) -> None:
        messages = [{"role": "user", "content": f"call {key} " * 50}]
        record = {"_id": key, "id": key, "agent": "a", "syscall": "llm.chat", "args": {"messages": messages}}
        record.update(priority=priority, program=None, queued_at=utcnow() + timedelta(microseconds=n))
        live.docs[key] = record
        book.enqueue(record, live=record)

    for n in range(5):
        queue(f"b{n}", 0, n)
    dispatcher.round()
    assert len(sent) == 4 and all(worker == "w1" or worker == "w2" for worker, _ in sent)  # full: b4 waits
    sent.clear()
    queue("i1", 9, 9)
    dispatcher.round()
    (worker, revoke), (again, lease) = sent
    assert revoke["kind"] == "revoke" and len(revoke["lease_ids"]) == 2
    assert (again, lease["key"]) == (worker, "i1")  # the revoke first, then the call, to the same worker
    assert fleet.snapshot()[worker].leases == {lease["lease_id"]}  # the revoked slots were freed at once
