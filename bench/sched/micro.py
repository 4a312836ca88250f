"""The dispatcher's CPU per call, in process: queue, lease (order, route, grant, publish) and settle.

No broker, no database: the lease book's collection is a stand-in that keeps
the records in a dict, leases are published to a no-op, and outcomes are
settled straight on the book. What is left is the scheduler's own work per
leased LLM call on the hot path, measured with ``time.process_time``::

    .venv/bin/python -m bench.sched.micro                  # every policy and router of this tree
    .venv/bin/python -m bench.sched.micro --calls 20000

Run it against an older tree (``git worktree add /tmp/old <commit>``) with
``PYTHONPATH=<dir with aiosd -> that tree>``: rows of policies that tree
does not have say so (this file adapts to the older signatures). The prompts look like agent programs': four system prompts of
~1,500 tokens, each call with 0-7 earlier steps of ~500 tokens. A fifth of
the calls are priority 9, so ``cache_aware``'s interactive lane, when on, is
open throughout and one worker of the four takes only those: its worst case.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from aiosd.daemon.leasing.book import LeaseBook
from aiosd.daemon.leasing.dispatcher import Dispatcher
from aiosd.daemon.leasing.fleet import Fleet
from aiosd.daemon.leasing.ordering import make_ordering
from aiosd.daemon.leasing.work import LeasedWork
from aiosd.sdk.cluster import WorkerState
from aiosd.sdk.process.logs import configure_logging
from aiosd.sdk.protocol import Usage, utcnow

WORKERS, CAPACITY = 4, 32
#: Policy, router, and (cache_aware) whether its interactive lane is on: a fifth of the calls are priority 9,
#: so with the lane on it is open throughout and one worker of four takes only those.
CONFIGS = [
    ("priority", "affinity", True),
    ("fifo", "affinity", True),
    ("las", "cache_aware", False),
    ("las", "cache_aware", True),
    ("fair", "cache_aware", False),
    ("fair", "cache_aware", True),
]


class Records:
    """Enough of a pymongo collection for the book, the fleet and the usage account."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    def find(self, query: dict[str, Any], *_: Any) -> Iterator[dict[str, Any]]:
        keys = query.get("_id", {}).get("$in", [])
        return iter([self.docs[k] for k in keys if k in self.docs])

    def bulk_write(self, *_: Any, **__: Any) -> None:
        """Transitions are not kept."""

    def replace_one(self, *_: Any, **__: Any) -> None:
        """Heartbeats are not kept."""

    def update_one(self, *_: Any, **__: Any) -> None:
        """Nor anything else."""


def _records(calls: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    systems = [f"You are agent type {t}. " * 260 for t in range(4)]
    steps = ["Observation: " + "".join(rng.choices("abcdefgh ", k=2000)) for _ in range(64)]
    out: list[dict[str, Any]] = []
    for n in range(calls):
        program = n % 200
        messages = [{"role": "system", "content": systems[program % 4]}, {"role": "user", "content": f"Task {program}"}]
        for k in range(rng.randrange(8)):
            messages += [{"role": "assistant", "content": "Thought: act."}, {"role": "user", "content": steps[k]}]
        out.append(
            {
                "_id": f"guest/m{n}",
                "id": f"m{n}",
                "agent": f"agent{program % 5}",
                "syscall": "llm.chat",
                "args": {"messages": messages, "max_tokens": 64},
                "priority": rng.choice([0, 0, 0, 5, 9]),
                "program": f"p{program}",
                "queued_at": utcnow() + timedelta(microseconds=n),
            }
        )
    return out


def _build(policy: str, routing: str, lane: bool = True) -> tuple[LeaseBook, Dispatcher, Fleet, Records]:
    live = Records()
    ordering = make_ordering(policy, 64)
    if hasattr(ordering, "charge"):
        from aiosd.daemon.leasing.routing import make_router

        book = LeaseBook(live, ordering.key, charge=ordering.charge)  # type: ignore[arg-type]
        router: Any = make_router(routing, 1) if lane else make_router(routing, 1, _no_lane())
    else:  # a tree from before the scheduling hooks and cache-aware routing
        from aiosd.daemon.leasing.routing import Router

        book, router = LeaseBook(live, ordering.key), Router(1)  # type: ignore[arg-type]
    fleet = Fleet(live, timeout=1e9)  # type: ignore[arg-type]
    for w in range(WORKERS):
        fleet.heartbeat(WorkerState(worker_id=f"w{w}", host="h", backend="sim", model="m", capacity=CAPACITY))
    wake = threading.Event()
    work = LeasedWork(book, fleet, live, None, lambda _f, _a: None, wake, lease_ttl=30, max_attempts=3)  # type: ignore[arg-type]
    dispatcher = Dispatcher(work, ordering, router, lambda _w, _b: None, wake, lease_ttl=30)
    return book, dispatcher, fleet, live


def _no_lane() -> Any:
    from aiosd.daemon.leasing.tuning import Tuning

    return Tuning(interactive_workers=0)


def _has_lane() -> bool:
    """Whether this tree's cache_aware router has the interactive lane."""
    try:
        from aiosd.daemon.leasing.tuning import Tuning
    except ImportError:
        return False
    return "interactive_workers" in getattr(Tuning, "__dataclass_fields__", {})


def measure(policy: str, routing: str, calls: int, lane: bool = True) -> dict[str, float]:
    """CPU microseconds per call of queueing, dispatching and settling ``calls`` calls."""
    records = _records(calls)
    book, dispatcher, fleet, live = _build(policy, routing, lane)
    live.docs.update({r["_id"]: r for r in records})
    cpu = {"queue": 0.0, "dispatch": 0.0, "settle": 0.0}
    start = time.process_time()
    for record in records:
        book.enqueue(record)
    cpu["queue"] = time.process_time() - start
    settled = 0
    while settled < calls:
        start = time.process_time()
        dispatcher.round()
        cpu["dispatch"] += time.process_time() - start
        start = time.process_time()
        for worker in (f"w{w}" for w in range(WORKERS)):
            for entry in book.held_by(worker):
                fleet.release(worker, entry["lease"]["id"])
                book.settle(entry["_id"], entry["lease"]["id"], Usage(prompt_tokens=3000, completion_tokens=64))
                settled += 1
        cpu["settle"] += time.process_time() - start
    return {name: seconds / calls * 1e6 for name, seconds in cpu.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=8000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration; the fastest is shown")
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    print(f"{args.calls} calls, {WORKERS} workers x {CAPACITY}; CPU microseconds per call (best of {args.repeat})")
    print(f"{'policy':<10} {'routing':<18} {'queue':>8} {'dispatch':>9} {'settle':>8} {'total':>8}")
    lanes = _has_lane()
    for policy, routing, lane in CONFIGS:
        if routing == "cache_aware" and not lane and not lanes:
            continue  # a tree without the lane: its cache_aware row is this one
        label = f"{routing}{' + lane' if lane and lanes and routing == 'cache_aware' else ''}"
        try:
            runs = [measure(policy, routing, args.calls, lane) for _ in range(args.repeat)]
        except ValueError as exc:  # a policy this tree does not have
            print(f"{policy:<10} {label:<18} ({exc})")
            continue
        best = min(runs, key=lambda r: sum(r.values()))
        total = sum(best.values())
        print(
            f"{policy:<10} {label:<18} {best['queue']:8.1f} {best['dispatch']:9.1f} {best['settle']:8.1f} {total:8.1f}"
        )


if __name__ == "__main__":
    main()
