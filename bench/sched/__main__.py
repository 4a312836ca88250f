"""Scheduling agent programs across four simulated GPUs: direct round robin vs aiosd (issue 13).

One command, from the repository root, with the development services running
(``scripts/services.sh start``)::

    .venv/bin/python -m bench.sched                 # everything (a few minutes)
    .venv/bin/python -m bench.sched --only a --configs direct,las

It starts four simulated H100s (``bench/sim``, one process), then for each
configuration runs the three workloads of :mod:`.workloads` and prints, per
workload, programs completed per minute, mean and p99 program completion
time, the prefix-cache hit rate (overall and per simulated GPU) and, for
(b), interactive p50/p99, then the ratios against the issue's targets.

Configurations: ``direct`` — the programs call the simulators' OpenAI API
themselves, round robin, no kernel; ``fifo`` — through aiosd with the
``fifo`` policy and the ``affinity`` router (what aiosd did before this
issue); ``las`` and ``fair`` — through aiosd with those policies and the
``cache_aware`` router. aiosd runs in a scratch vhost and database (a private
database server unless ``--shared-db``), with one agent per role (so ``fair``
has agents to share between), a scheduler and one ``aiosd worker --backend
sglang`` per simulated GPU; everything is removed at the end.

Times are simulated seconds (wall seconds / ``--time-scale``); ``las`` and
``fair``'s aging settings and the interactive lane's window are given in
simulated seconds and scaled for the scheduler, which runs on the wall clock.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from aiosd.sdk.aio import AsyncClient
from aiosd.sdk.process.settings import Settings
from aiosd.sdk.protocol import utcnow
from bench.procstat import CpuMeter, broker_pid, database_pid
from bench.scratch import Scratch

from . import workloads
from .cluster import Kernel, Simulators, start_simulators
from .report import Figures, Target, figures, table
from .runner import Direct, Run, RunRecord
from .runner import Kernel as KernelBackend

CONFIGS = {"direct": None, "fifo": ("fifo", "affinity"), "las": ("las", "cache_aware"), "fair": ("fair", "cache_aware")}
#: Which programs each workload is judged on.
KINDS = {"a": {"agent"}, "b0": {"interactive"}, "b": {"batch", "agent"}, "c": {"long", "short"}}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--time-scale", type=float, default=1.5, help="wall seconds per simulated second (default 1.5)")
    p.add_argument("--capacity", type=int, default=16, help="calls an aiosd worker holds at once (default 16)")
    p.add_argument("--cache-tokens", type=int, default=112912, help="KV pool per simulated GPU (default: 1/4 H100)")
    p.add_argument("--agents", type=int, default=64, help="(a) agent lanes (default 64)")
    p.add_argument("--types", type=int, default=workloads.Sizes.types, help="(a, b) program types")
    p.add_argument("--system-tokens", type=int, default=workloads.Sizes.system_tokens, help="their system prompts")
    p.add_argument("--duration", type=float, default=workloads.Sizes.duration, help="simulated s of (a), (b)")
    p.add_argument("--batch-lanes", type=int, default=32, help="(b) batch programs running at once (default 32)")
    p.add_argument("--interactive-rate", type=float, default=4.0, help="(b) interactive calls per second (default 4)")
    p.add_argument("--long", type=int, default=4, help="(c) long programs (default 4)")
    p.add_argument("--fanout", type=int, default=32, help="(c) parallel calls per long-program step (default 32)")
    p.add_argument("--shorts", type=int, default=48, help="(c) short programs (default 48)")
    p.add_argument("--starvation-bound", type=float, default=60.0, help="las/fair bound, simulated s (default 60)")
    p.add_argument("--aging-rate", type=float, default=1000.0, help="las/fair tokens per simulated s (default 1000)")
    p.add_argument("--balance-tokens", type=float, default=None, help="route_balance_tokens (default: the setting's)")
    p.add_argument(
        "--interactive-workers", type=int, default=None, help="cache_aware's interactive lane (default: the setting's)"
    )
    p.add_argument("--interactive-window", type=float, default=10.0, help="its window, simulated s (default 10)")
    p.add_argument(
        "--interactive-standby-tokens",
        type=int,
        default=None,
        help="its standby workers' limit on prompt tokens to compute, 0 for none (default: the setting's)",
    )
    p.add_argument(
        "--warm-lane",
        action="store_true",
        help="do not wait out the lane's window between workloads ((b) then starts with (b0)'s lane open)",
    )
    p.add_argument("--only", default="a,b,c", help="workloads to run (default a,b,c)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"configurations (default {','.join(CONFIGS)})")
    p.add_argument("--shared-db", action="store_true", help="use the shared database server, not a private one")
    args = p.parse_args()
    args.workloads = [w.strip() for w in args.only.split(",") if w.strip()]
    args.config_names = [c.strip() for c in args.configs.split(",") if c.strip()]
    if unknown := set(args.config_names) - set(CONFIGS):
        p.error(f"unknown configurations {sorted(unknown)}")
    return args


def build(args: argparse.Namespace) -> list[tuple[workloads.Workload, set[str]]]:
    """The workloads to run, each with the program kinds it is judged on."""
    sizes = workloads.Sizes(
        agents=args.agents, types=args.types, system_tokens=args.system_tokens, duration=args.duration
    )
    out: list[workloads.Workload] = []
    if "a" in args.workloads:
        out.append(workloads.agents(sizes))
    if "b" in args.workloads:
        out.append(workloads.backlog(sizes, args.interactive_rate, args.batch_lanes, loaded=False))
        out.append(workloads.backlog(sizes, args.interactive_rate, args.batch_lanes, loaded=True))
    if "c" in args.workloads:
        out.append(workloads.lengths(sizes, args.long, args.fanout, args.shorts))
    return [(w, KINDS[w.name]) for w in out]


async def run_one(
    config: str, workload: workloads.Workload, backend: Any, sims: Simulators, scale: float, meter: CpuMeter
) -> tuple[RunRecord, list[dict[str, Any]]]:
    """One workload under one configuration, on emptied caches; waits until the GPUs are idle again."""
    await asyncio.to_thread(sims.reset)
    started, before = time.monotonic(), meter.sample()
    record = await Run(workload, backend, scale).go()
    await asyncio.to_thread(sims.idle)
    wall, calls = time.monotonic() - started, len(record.calls)
    cpu, others = CpuMeter.per_call(before, meter.sample(), calls)
    stats = await asyncio.to_thread(sims.stats)
    spent = ", ".join(f"{name} {ms:.1f}" for name, ms in _grouped(cpu).items())
    print(f"  {config:<6} {workload.name:<3} {wall:5.1f} s wall, {calls:5} calls ({calls / wall:5.1f}/s);", end=" ")
    print(f"CPU ms per call: {spent}, others {others:.1f}")
    return record, stats


def _grouped(cpu: dict[str, float]) -> dict[str, float]:
    """Per-process CPU with the workers summed."""
    out: dict[str, float] = {}
    for name, ms in cpu.items():
        key = "workers" if name.startswith("worker") else name
        out[key] = out.get(key, 0.0) + ms
    return out


async def run_direct(
    args: argparse.Namespace, sims: Simulators, plan: list[Any], meter: CpuMeter
) -> dict[str, Figures]:
    backend = Direct(sims.urls)
    out: dict[str, Figures] = {}
    try:
        for workload, kinds in plan:
            record, stats = await run_one("direct", workload, backend, sims, args.time_scale, meter)
            out[workload.name] = figures("direct round robin", record, stats, args.time_scale, kinds)
    finally:
        await backend.close()
    return out


async def run_kernel(
    config: str, args: argparse.Namespace, kernel: Kernel, sims: Simulators, plan: list[Any], base: CpuMeter
) -> dict[str, Figures]:
    policy, routing = CONFIGS[config] or ("", "")
    settings = {
        "starvation_bound": str(args.starvation_bound * args.time_scale),
        "aging_rate": str(args.aging_rate / args.time_scale),
        "route_cache_tokens": str(args.cache_tokens),
        "interactive_window": str(args.interactive_window * args.time_scale),
    }
    if args.balance_tokens is not None:
        settings["route_balance_tokens"] = str(args.balance_tokens)
    if args.interactive_workers is not None:
        settings["interactive_workers"] = str(args.interactive_workers)
    if args.interactive_standby_tokens is not None:
        settings["interactive_standby_tokens"] = str(args.interactive_standby_tokens)
    since = utcnow()
    await asyncio.to_thread(kernel.start, policy, routing, sims, args.capacity, **settings)
    await asyncio.to_thread(_wait_for_workers, kernel, len(sims.urls), since)
    meter = CpuMeter(dict(base.pids))
    meter.add("scheduler", kernel.children[0].pid)
    for n, child in enumerate(kernel.children[1:]):
        meter.add(f"worker{n}", child.pid)
    clients = {role: await AsyncClient.connect(url, timeout=900) for role, url in kernel.urls.items()}
    label = f"aiosd {policy}+{routing}"
    out: dict[str, Figures] = {}
    try:
        for n, (workload, kinds) in enumerate(plan):
            if n and routing == "cache_aware" and not args.warm_lane:
                # Each workload starts with the interactive lane closed: (b) does not inherit (b0)'s lane,
                # (c) does not start with a worker kept for interactive calls that never come.
                await asyncio.sleep(args.interactive_window * args.time_scale + 1.0)
            record, stats = await run_one(config, workload, KernelBackend(clients), sims, args.time_scale, meter)
            out[workload.name] = figures(label, record, stats, args.time_scale, kinds)
    finally:
        for client in clients.values():
            await client.close()
        await asyncio.to_thread(kernel.stop)
    return out


def _wait_for_workers(kernel: Kernel, count: int, since: Any, timeout: float = 60.0) -> None:
    """Until the new scheduler has heard from every worker (routing needs the whole fleet)."""
    workers = kernel.scratch.mongo[kernel.env.db]["workers"]
    deadline = time.monotonic() + timeout
    while workers.count_documents({"alive": True, "last_seen": {"$gt": since}}) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("the workers did not register with the scheduler")
        time.sleep(0.2)


async def run_all(args: argparse.Namespace, scratch: Scratch, base: CpuMeter) -> dict[str, dict[str, Figures]]:
    sims = await asyncio.to_thread(start_simulators, scratch, 4, args.time_scale, args.cache_tokens)
    base.add("simulators", sims.child.pid)
    plan = build(args)
    results: dict[str, dict[str, Figures]] = {}
    if "direct" in args.config_names:
        results["direct"] = await run_direct(args, sims, plan, base)
    kernel = Kernel(scratch, scratch.env("sched"))
    try:
        await asyncio.to_thread(kernel.add_agents)
        for config in args.config_names:
            if config != "direct":
                results[config] = await run_kernel(config, args, kernel, sims, plan, base)
    finally:
        await asyncio.to_thread(kernel.remove_agents)
    return results


def report(args: argparse.Namespace, results: dict[str, dict[str, Figures]]) -> None:
    names = [w for w in ("a", "b0", "b", "c") if any(w in r for r in results.values())]
    titles = {
        "a": f"(a) {args.agents} agents running {workloads.Sizes.steps}-step programs of {args.types} types",
        "b0": "(b0) interactive priority-9 calls alone (the unloaded baseline)",
        "b": f"(b) the same calls over {args.agents // 4} agents and {args.batch_lanes} lanes of batch programs",
        "c": f"(c) {args.long} long programs (x{args.fanout} parallel calls per step) and {args.shorts} short ones",
    }
    for name in names:
        rows = [r[name] for r in results.values() if name in r]
        print()
        print(table(titles[name], rows, interactive=name in ("b0", "b")))
        if name in ("b0", "b"):
            for f in rows:
                spread = ", ".join(f"{w} {n}" for w, n in f.interactive_by_worker.items())
                slowest = ", ".join(
                    f"{took:.3f} s at {at:.1f} s ({queued:.3f} queued)" for at, took, queued in f.interactive_slowest
                )
                print(
                    f"    {f.config:<22} interactive p99: {f.interactive_queue_p99:.3f} s in aiosd's queue,"
                    f" {f.interactive_rest_p99:.3f} s the rest; calls per worker: {spread}; slowest: {slowest}"
                )
        if name == "c":
            for f in rows:
                kinds = ", ".join(f"{k} {n} x {mean:.1f} s" for k, (n, mean) in f.by_kind.items())
                print(f"    {f.config:<22} mean completion by kind: {kinds}; longest queue wait {f.max_queue:.1f} s")
    print()
    print("Targets (issue 13):")
    for target in targets(args, results):
        print(target.line())


def targets(args: argparse.Namespace, results: dict[str, dict[str, Figures]]) -> list[Target]:
    out: list[Target] = []
    direct, fifo = results.get("direct", {}), results.get("fifo", {})
    for config in ("las", "fair"):
        r = results.get(config, {})
        if "a" in r and "a" in direct:
            out.append(
                Target(
                    f"(a) programs/min, {config}+cache vs direct",
                    _ratio(r["a"].programs_per_min, direct["a"].programs_per_min),
                    1.5,
                )
            )
            out.append(
                Target(
                    f"(a) cache hit rate, {config}+cache vs direct", _ratio(r["a"].hit_rate, direct["a"].hit_rate), 2.0
                )
            )
        if "c" in r and "c" in fifo:
            out.append(
                Target(
                    f"(c) mean completion, fifo / {config}",
                    _ratio(fifo["c"].completion_mean, r["c"].completion_mean),
                    1.5,
                )
            )
        if "b" in r and "b0" in r:
            out.append(
                Target(
                    f"(b) interactive p99, {config}: backlog / unloaded",
                    _ratio(r["b"].interactive_p99, r["b0"].interactive_p99),
                    1.2,
                    higher_is_better=False,
                )
            )
    if "c" in results.get("las", {}):
        las = results["las"]["c"]
        bound = args.starvation_bound + (fifo["c"].max_queue if "c" in fifo else 0.0)
        out.append(
            Target(
                f"(c) las longest queue wait / (bound {args.starvation_bound:g} s + fifo's longest)",
                _ratio(las.max_queue, bound),
                1.0,
                higher_is_better=False,
            )
        )
    return out  # fmt: skip


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _lane(args: argparse.Namespace) -> str:
    workers = args.interactive_workers
    if workers is None:
        workers = Settings.model_fields["interactive_workers"].default
    return f"{workers} worker(s), window {args.interactive_window:g} s" if workers else "off"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> None:
    args = parse()
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"command    {shlex.join([Path(sys.executable).name, '-m', 'bench.sched', *sys.argv[1:]])}")
    print(
        f"simulator  4 x bench.sim (Llama-3.1-8B on H100, SGLang-like), KV pool {args.cache_tokens} tokens each,"
        f" time scale {args.time_scale} (wall s per simulated s); times below are simulated seconds"
    )
    print(
        f"aiosd      worker capacity {args.capacity}; las/fair starvation bound {args.starvation_bound:g} s,"
        f" aging rate {args.aging_rate:g} tokens/s (simulated); cache_aware's interactive lane"
        f" {_lane(args)}; {os.cpu_count()} CPUs"
    )
    base = CpuMeter()
    base.add("client", os.getpid())
    base.add("rabbitmq", broker_pid())
    with Scratch() as scratch:
        base.add("database", database_pid() if args.shared_db else scratch.private_database(database_pid()))
        results = asyncio.run(run_all(args, scratch, base))
    report(args, results)


if __name__ == "__main__":
    main()
