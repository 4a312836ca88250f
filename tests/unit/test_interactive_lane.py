"""The interactive lane of cache-aware routing: workers kept clear of batch work while interactive calls are about."""

from __future__ import annotations

from typing import Any

from aiosd.daemon.leasing.cacherouting import CacheRouter
from aiosd.daemon.leasing.fleet import Member
from aiosd.daemon.leasing.prefixes import shape_of
from aiosd.daemon.leasing.tuning import Tuning
from aiosd.sdk.cluster import WorkerState

SYSTEM = "You summarise records for the nightly report. " * 150  # ~7,000 characters: a cached prefix
TUNING = Tuning(route_balance_tokens=1e9, route_cache_tokens=100_000, interactive_workers=1, interactive_window=10.0)


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
    tuning = Tuning(route_cache_tokens=100_000, interactive_preempt=False)
    router, _ = _router(tuning)
    members = _members("w1", "w2")
    router.begin(members)
    _lease(router, _call("b1"), members)
    _lease(router, _call("b2", system="batch type 2 " * 400), members)
    _lease(router, _call("i1", priority=9), members)
    assert router.reserved and router.preempted() == {}
