"""Cache-aware routing: longest cached prefix within the balance threshold, eviction, programs, loads."""

from __future__ import annotations

from typing import Any

import pytest

from aiosd.daemon.leasing.cacherouting import BLOCK_TOKENS, CacheRouter, Picture
from aiosd.daemon.leasing.fleet import Member
from aiosd.daemon.leasing.prefixes import BLOCK_BYTES, MAX_BLOCKS, shape_of
from aiosd.daemon.leasing.routing import Router, make_router
from aiosd.daemon.leasing.tuning import Tuning
from aiosd.sdk.cluster import WorkerState

SYSTEM_A = "You are agent A. " * 400  # 6,800 characters: six blocks
SYSTEM_B = "You are agent B. " * 400
TUNING = Tuning(prefill_weight=0.1, route_balance_tokens=1000.0, route_cache_tokens=100_000)


def _members(*names: str, capacity: int = 8) -> dict[str, Member]:
    return {
        n: Member(WorkerState(worker_id=n, host="h", backend="b", model="m", capacity=capacity), last_seen=0.0)
        for n in names
    }


def _call(key: str, system: str, *turns: str, program: str | None = None, max_tokens: int = 100) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}, *({"role": "user", "content": t} for t in turns)]
    return {
        "_id": key,
        "agent": "a",
        "syscall": "llm.chat",
        "kind": "llm",
        "program": program,
        "args": {"model": "m"},
        "shape": shape_of(messages, max_tokens),
    }


def _lease(router: CacheRouter, call: dict[str, Any], members: dict[str, Member]) -> str:
    """What the dispatcher does: choose, grant (the lease counts on the member), tell the router."""
    worker = router.choose(call, members)
    assert worker is not None
    call["lease"] = {"id": f"lease-{call['_id']}"}
    members[worker].leases.add(call["lease"]["id"])
    router.served(call, worker)
    return worker


def test_the_longest_cached_prefix_wins() -> None:
    router, members = CacheRouter(TUNING), _members("w1", "w2")
    router.begin(members)
    on_a = _lease(router, _call("a1", SYSTEM_A, "task one"), members)
    on_b = _lease(router, _call("b1", SYSTEM_B, "task two"), members)
    assert on_a != on_b  # nothing cached yet: the second went to the less loaded worker
    for n in range(3):  # each call of A's and B's types follows its system prompt
        assert router.choose(_call(f"a{n + 2}", SYSTEM_A, f"other task {n}"), members) == on_a
        assert router.choose(_call(f"b{n + 2}", SYSTEM_B, f"other task {n}"), members) == on_b


def test_a_program_follows_its_own_history_over_a_shared_system_prompt() -> None:
    router, members = CacheRouter(TUNING), _members("w1", "w2")
    history = "observation " * 300  # its own conversation: longer than the shared part's match elsewhere
    first = _lease(router, _call("p1", SYSTEM_A, history, program="p"), members)
    other = next(w for w in members if w != first)
    # Another program of the same type ran on the other worker too: both hold the system prompt.
    router.served(_call("q1", SYSTEM_A, "unrelated"), other)
    assert router.choose(_call("p2", SYSTEM_A, history, "next step", program="p"), members) == first


def test_load_beyond_the_threshold_overrides_the_prefix() -> None:
    router, members = CacheRouter(TUNING), _members("w1", "w2")
    router.begin(members)
    home = _lease(router, _call("a1", SYSTEM_A, "t", max_tokens=100), members)
    other = next(w for w in members if w != home)
    # Heavy calls with no shared prefix pile up on the home worker (as if it had been chosen for them).
    for n in range(4):
        call = _call(f"x{n}", f"unrelated {n} " * 50, max_tokens=300)
        call["lease"] = {"id": f"lease-x{n}"}
        members[home].leases.add(call["lease"]["id"])
        router.served(call, home)
    assert router.choose(_call("a2", SYSTEM_A, "t2"), members) == other  # > 1000 tokens more outstanding
    for n in range(4):  # they finish: the next round sees the home worker light again
        members[home].leases.discard(f"lease-x{n}")
    router.begin(members)
    assert router.choose(_call("a3", SYSTEM_A, "t3"), members) == home


def test_without_a_cached_prefix_outstanding_tokens_decide_not_call_counts() -> None:
    router, members = CacheRouter(TUNING), _members("w1", "w2")
    big = _call("big", "long prompt " * 500, max_tokens=1000)
    _lease(router, big, members)  # one call of ~1,100 tokens of service
    loaded = next(w for w in members if members[w].leases)
    light = next(w for w in members if w != loaded)
    for n in range(3):  # three small ones land on the other worker: it holds more calls, fewer tokens
        small = _call(f"s{n}", f"short {n}", max_tokens=10)
        small["lease"] = {"id": f"lease-s{n}"}
        members[light].leases.add(small["lease"]["id"])
        router.served(small, light)
    assert router.choose(_call("new", "brand new prompt " * 40), members) == light


def test_a_program_stays_on_its_worker_when_no_prefix_decides() -> None:
    router, members = CacheRouter(TUNING), _members("w1", "w2", "w3")
    worker = _lease(router, _call("p1", "short", program="p"), members)  # too short to name a block
    for wid in members:
        members[wid].leases.clear()
    router.begin(members)
    assert router.choose(_call("p2", "also short", program="p"), members) == worker


def test_pictures_evict_the_least_recently_used_and_keep_shared_prefixes_longest() -> None:
    picture = Picture(capacity_blocks=10)
    shared = shape_of([{"role": "system", "content": SYSTEM_A}])  # 6 blocks
    extended = shape_of([{"role": "system", "content": SYSTEM_A}, {"role": "user", "content": "z" * 4096}])
    picture.add(extended.names())  # the shared 6 and 4 of its own: full
    picture.add(shape_of([{"role": "user", "content": "y" * 2048}]).names())  # 2 more: 2 must go
    # The leaves went first: the shared prefix is intact, the extension lost its tail.
    assert picture.match(shared.names()) == 6
    assert picture.match(extended.names()) == 8
    for n in range(10):  # unrelated prompts push everything out
        picture.add(shape_of([{"role": "user", "content": f"{n} " * 600}]).names())
    assert len(picture) == 10 and picture.match(shared.names()) == 0


def test_an_evicted_prefix_no_longer_attracts_calls() -> None:
    small = Tuning(route_balance_tokens=1e9, route_cache_tokens=8 * BLOCK_TOKENS)
    router, members = CacheRouter(small), _members("w1", "w2")
    home = _lease(router, _call("a1", SYSTEM_A, "t"), members)
    assert router.choose(_call("a2", SYSTEM_A, "t2"), members) == home
    for n in range(4):
        router.served(_call(f"x{n}", f"filler {n} " * 400), home)
    for wid in members:
        members[wid].leases.clear()
    router.begin(members)
    assert router.pictures[home].match(_call("a3", SYSTEM_A).get("shape").names()) == 0  # type: ignore[union-attr]


def test_a_call_waits_for_its_full_worker_unless_that_worker_is_overloaded() -> None:
    router, members = CacheRouter(TUNING), _members("w1", "w2")
    home = _lease(router, _call("a1", SYSTEM_A, "t"), members)
    other = next(w for w in members if w != home)
    full = Member(
        WorkerState(worker_id=home, host="h", backend="b", model="m", capacity=1, leases=["busy"]),
        last_seen=0.0,
        leases={"busy"},
    )
    members[home] = full
    router.begin(members)
    # Full, but only one call's worth busier than the idle worker: the call keeps its place in the queue.
    assert router.choose(_call("a2", SYSTEM_A, "t"), members) is None
    # A call with no prefix anywhere does not wait: it goes where there is room; nor does one whose
    # cached prefix costs less to recompute than its own answer.
    assert router.choose(_call("n1", "no shared prefix " * 100), members) == other
    assert router.choose(_call("a2", SYSTEM_A, "t", max_tokens=1000), members) == other
    # Beyond the threshold the prefix gives way to balance.
    strict = CacheRouter(Tuning(route_balance_tokens=10.0, route_cache_tokens=100_000))
    strict.pictures = router.pictures
    strict.begin(members)
    assert strict.choose(_call("a3", SYSTEM_A, "t"), members) == other


def test_only_workers_of_the_kind_and_model_are_chosen_and_gone_workers_are_forgotten() -> None:
    router, members = CacheRouter(TUNING), _members("w1", "w2")
    home = _lease(router, _call("a1", SYSTEM_A, "t"), members)
    sick = Member(
        WorkerState(worker_id=home, host="h", backend="b", model="m", capacity=8, healthy=False), last_seen=0.0
    )
    members[home] = sick
    router.begin(members)
    assert router.choose(_call("a2", SYSTEM_A, "t"), members) != home  # unhealthy: never waited for
    call = _call("m", SYSTEM_A, "t")
    call["args"]["model"] = "other"
    assert router.choose(call, members) is None
    del members[home]
    router.begin(members)
    assert home not in router.pictures
    tool = {"_id": "t", "agent": "a", "syscall": "tool.call", "kind": "tools", "args": {"name": "calc"}}
    assert router.choose(tool, members) is None  # no tool runner


def test_prefix_blocks_are_chained_bounded_and_prefix_stable() -> None:
    base = [{"role": "system", "content": SYSTEM_A}]
    one = shape_of(base)
    two = shape_of([*base, {"role": "user", "content": "q" * 1000}])
    assert len(one.names()) == (len(SYSTEM_A) + 8) // BLOCK_BYTES  # only full blocks are named
    assert list(two.names())[: len(one.names())] == list(one.names())
    assert shape_of([{"role": "user", "content": SYSTEM_A}]).names()[0] != one.names()[0]  # the role counts
    assert len(shape_of([{"role": "user", "content": "w" * BLOCK_BYTES * (MAX_BLOCKS + 50)}]).names()) == MAX_BLOCKS
    assert one.prompt_tokens == (len(SYSTEM_A) + len("system") + 2) // 4


def test_make_router_names_both_routers() -> None:
    assert isinstance(make_router("cache_aware", 1, TUNING), CacheRouter)
    assert isinstance(make_router("affinity", 1), Router)
    with pytest.raises(ValueError, match="unknown routing"):
        make_router("random", 1)
