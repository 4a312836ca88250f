"""Driving calls at a fixed concurrency and measuring them: latencies, throughput, CPU per call.

Every measured run is preceded by a warm-up through the same threads (or
tasks), and the CPU of every process of the phase is sampled right before the
first and right after the last measured call, so setup and warm-up are not
counted.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from procstat import CpuMeter

from aiosd.sdk import Client

#: ``i -> args`` of the i-th call.
ArgsFor = Callable[[int], dict[str, Any]]


@dataclass
class Run:
    """One measured run of one kind of call."""

    label: str
    calls: int
    concurrency: int
    wall: float
    latencies_ms: list[float]
    cpu: dict[str, float]  # CPU ms per call, by process
    others: float = 0.0  # CPU ms per call of everything else on the machine meanwhile (noise)
    errors: int = 0
    first_error: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.calls / self.wall if self.wall > 0 else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "calls": self.calls,
            "concurrency": self.concurrency,
            "wall_s": round(self.wall, 3),
            "throughput": round(self.throughput, 1),
            "p50_ms": round(self.p50, 2),
            "p99_ms": round(self.p99, 2),
            "cpu_ms_per_call": {k: round(v, 3) for k, v in self.cpu.items()},
            "cpu_ms_total": round(self.cpu_total, 3),
            "others_cpu_ms_per_call": round(self.others, 3),
            "errors": self.errors,
            **({"first_error": self.first_error} if self.errors else {}),
            **self.notes,
        }


def pooled(runs: list[Run]) -> Run:
    """The runs of one label over several rounds as one: calls and time summed, CPU per call weighted by calls.

    Rounds alternate the variants a target compares (A/B/A/B), so drift on a
    shared machine falls on both; each round's rate is kept in ``notes``.
    """
    if len(runs) == 1:
        return runs[0]
    calls = sum(r.calls for r in runs)
    cpu = {p: sum(r.cpu.get(p, 0.0) * r.calls for r in runs) / calls for p in {p for r in runs for p in r.cpu}}
    notes: dict[str, Any] = {}
    for r in runs:
        notes.update(r.notes)  # the last round's say
    notes["round_rates"] = [round(r.throughput, 1) for r in runs]
    return Run(
        label=runs[0].label,
        calls=calls,
        concurrency=runs[0].concurrency,
        wall=sum(r.wall for r in runs),
        latencies_ms=[ms for r in runs for ms in r.latencies_ms],
        cpu=cpu,
        others=sum(r.others * r.calls for r in runs) / calls,
        errors=sum(r.errors for r in runs),
        first_error=next((r.first_error for r in runs if r.first_error), ""),
        notes=notes,
    )


class _Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors = 0
        self.first_error = ""

    def add(self, ms: float, error: str | None) -> None:
        with self.lock:
            self.latencies.append(ms)
            if error is not None:
                self.errors += 1
                self.first_error = self.first_error or error


def drive(
    client: Client,
    syscall: str,
    args_for: ArgsFor,
    *,
    calls: int,
    concurrency: int,
    warmup: int,
    meter: CpuMeter,
    label: str | None = None,
) -> Run:
    """``calls`` syscalls through ``client`` from ``concurrency`` threads, after ``warmup`` unmeasured ones."""
    counter = itertools.count()

    def one(tally: _Tally) -> None:
        i = next(counter)
        start = time.perf_counter()
        try:
            reply = client.request(syscall, args_for(i))
            error = None if reply.status.value == "ok" else f"{reply.status.value}: {reply.error}"
        except Exception as exc:  # a timeout or a lost connection is a failed call, not a crash
            error = repr(exc)
        tally.add((time.perf_counter() - start) * 1000, error)

    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="bench-call")
    try:
        warm = _Tally()
        list(pool.map(lambda _: one(warm), range(max(warmup, concurrency))))
        tally = _Tally()
        before = meter.sample()
        start = time.perf_counter()
        list(pool.map(lambda _: one(tally), range(calls)))
        wall = time.perf_counter() - start
        after = meter.sample()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # interrupted: drop the calls not started
        raise
    pool.shutdown()
    cpu, others = CpuMeter.per_call(before, after, calls)
    return Run(
        label or syscall, calls, concurrency, wall, tally.latencies, cpu, others, tally.errors, tally.first_error
    )


async def drive_async(
    call: Callable[[int], Awaitable[None]], *, calls: int, concurrency: int, warmup: int, meter: CpuMeter, label: str
) -> Run:
    """``calls`` coroutine calls from ``concurrency`` tasks, after ``warmup`` unmeasured ones."""

    async def batch(n: int, tally: _Tally) -> float:
        counter = itertools.count()

        async def task() -> None:
            while (i := next(counter)) < n:
                start = time.perf_counter()
                error = None
                try:
                    await call(i)
                except Exception as exc:
                    error = repr(exc)
                tally.add((time.perf_counter() - start) * 1000, error)

        start = time.perf_counter()
        await asyncio.gather(*(task() for _ in range(concurrency)))
        return time.perf_counter() - start

    await batch(max(warmup, concurrency), _Tally())
    tally = _Tally()
    before = meter.sample()
    wall = await batch(calls, tally)
    after = meter.sample()
    cpu, others = CpuMeter.per_call(before, after, calls)
    return Run(label, calls, concurrency, wall, tally.latencies, cpu, others, tally.errors, tally.first_error)
