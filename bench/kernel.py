"""Benchmark the kernel against the broker ceiling and the bare LLM backend (issue 9).

One run, on one machine, prints for each phase the throughput, p50/p99 latency
and CPU milliseconds per call of every process involved (the client -- this
process --, RabbitMQ's ``beam.smp``, the database server, the scheduler, the
worker, the echo consumer, the stand-in backend), read from ``/proc``:

(a) broker ceiling: the SDK client against ``echo.py``, which answers on the
    ingress queue at once, with no database;
(b) ``memory.add`` (at concurrency 1 and ``--concurrency``), ``memory.get``,
    ``memory.search`` and ``storage.write`` through aiosd;
(c) ``llm.chat`` through aiosd (scheduler + ``aiosd worker --backend openai``)
    against ``standin.py``, an instant OpenAI-compatible server, and the
    worker's own backend code calling it directly at the same concurrency;
(d) ``memory.add`` on an empty database and after ``--history`` completed
    syscalls (results, memory notes, audit chain) were preloaded.

and then issue 9's targets as ratios with PASS/MISS. The phases run
``--rounds`` times in turn (a, b, c, d, a, b, c, d, ...), so the runs a target
compares alternate and share the machine's drift; each round's tables are
printed, then the rounds pooled (calls and time summed, CPU per call
weighted by calls), and each target gives its pooled figure and its figure in
every round. Every phase runs in its
own scratch vhost and database on the development services
(``scripts/services.sh start``), removed at the end, also on failure or Ctrl-C::

    .venv/bin/python bench/kernel.py                         # everything, default sizes
    .venv/bin/python bench/kernel.py --calls 300 --history 5000 --only a,b

Choices. Agents run as the scheduler's own broker user ``guest`` with
``AIOSD_TRUST_SCHEDULER_USER=true`` (as the other benches): the caller then
has the unrestricted policy, so no rate limit or quota refuses benchmark load,
while every call still goes through the same intake, authorization (the
policy lookup and the per-period request counter), persistence, audit and
reply path as an agent with a policy document. The scheduler and worker run
with their default settings; ``AIOSD_*`` variables in the environment (e.g.
``AIOSD_THREADS``, ``AIOSD_PREFETCH``) pass through to them, and the echo
consumer uses the same prefetch as the scheduler. RabbitMQ and the database
server are shared: CPU that others make them spend during a phase counts too
(the ``(others)`` column shows how busy the rest of the machine was; the
database's figure in phase (a), which uses no database, is all noise).
``--private-db`` runs a FerretDB of the bench's own (the shared server's
binary and flags, scratch files, a free port), so its figure is the kernel's
alone.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import phases
from load import Run, pooled
from procstat import CpuMeter, broker_pid, database_pid
from report import Target, table, targets, write_json
from scratch import Scratch

import aiosd.sdk
from aiosd.sdk.process.settings import Settings

TITLES = {
    "a": "(a) broker ceiling: SDK client -> RabbitMQ -> echo consumer, no database",
    "b": "(b) memory and storage syscalls through aiosd",
    "c": "(c) llm.chat on the instant stand-in backend: direct vs through aiosd",
    "d": "(d) memory.add with completed syscalls already in the database",
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="measured calls per run (default 2000)")
    parser.add_argument("--concurrency", type=int, default=32, help="callers for memory/storage runs (default 32)")
    parser.add_argument("--llm-concurrency", type=int, default=64, help="callers for llm.chat, and worker capacity")
    parser.add_argument("--llm-calls", type=int, default=0, help="measured llm.chat calls (default: --calls)")
    parser.add_argument("--serial-calls", type=int, default=300, help="measured calls of the concurrency-1 runs")
    parser.add_argument("--search-calls", type=int, default=100, help="measured memory.search calls (default 100)")
    parser.add_argument("--warmup", type=int, default=100, help="unmeasured calls before each run")
    parser.add_argument("--history", type=int, default=100_000, help="completed syscalls preloaded for phase d")
    parser.add_argument("--only", default="a,b,c,d", help="phases to run, e.g. a,b (default: all)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="times every phase runs, in turn (A/B/A/B: compared runs share the machine's drift; default 2)",
    )
    parser.add_argument(
        "--private-db",
        action="store_true",
        help="run a database server of our own (same binary and flags, scratch files)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.only.split(",") if p.strip()]
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if unknown := set(args.phases) - set(TITLES):
        parser.error(f"unknown phases {sorted(unknown)}; choose from a,b,c,d")
    return args


def main() -> None:
    args = parse()
    signal.signal(signal.SIGTERM, _interrupt)
    prefetch = int(os.environ.get("AIOSD_PREFETCH") or Settings.model_fields["prefetch"].default)
    threads = int(os.environ.get("AIOSD_THREADS") or Settings.model_fields["threads"].default)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    meta = {
        "command": command,
        "private_db": args.private_db,
        "aiosd": _source(),
        "cpus": os.cpu_count(),
        "scheduler_threads": threads,
        "prefetch": prefetch,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"command    {command}")
    print(f"aiosd      {meta['aiosd']}")
    print(f"machine    {meta['cpus']} CPUs; scheduler threads {threads}, prefetch {prefetch}; agent guest (trusted)")
    base = CpuMeter()
    base.add("client", os.getpid())
    base.add("rabbitmq", broker_pid())
    rounds: list[dict[str, list[Run]]] = []
    history: dict[str, Any] = {}  # phase d's databases, made once
    with Scratch() as scratch:
        if args.private_db:
            base.add("database", scratch.private_database(database_pid()))
            print(f"database   a private FerretDB for this run at {scratch.mongo_url} (--private-db)")
        else:
            base.add("database", database_pid())
            print(f"database   the shared development FerretDB at {scratch.mongo_url} (others' load on it counts too)")
        for n in range(1, args.rounds + 1):
            rounds.append({})
            for phase in args.phases:
                print(f"\n... round {n}/{args.rounds}: {TITLES[phase]}", file=sys.stderr, flush=True)
                rounds[-1][phase] = _phase(phase, scratch, args, base, prefetch, history)
                title = f"{TITLES[phase]}, round {n}/{args.rounds}" if args.rounds > 1 else TITLES[phase]
                print("\n" + table(title, rounds[-1][phase], _note(phase, args, rounds[-1][phase])), flush=True)
    results = {phase: [pooled(list(runs)) for runs in zip(*(r[phase] for r in rounds), strict=True)]
               for phase in args.phases}  # fmt: skip
    if args.rounds > 1:
        for phase, runs in results.items():
            print("\n" + table(f"{TITLES[phase]}, {args.rounds} rounds pooled", runs, _note(phase, args, runs)))
    items = with_rounds(check(results, args), [check(r, args) for r in rounds] if args.rounds > 1 else [])
    print("\n" + targets(items))
    if args.json:
        write_json(args.json, meta, results, items)
        print(f"\nfigures written to {args.json}")


def check(results: dict[str, list[Run]], args: argparse.Namespace) -> list[Target]:
    """Issue 9's targets that the phases run make checkable."""
    run = {r.label: r for runs in results.values() for r in runs}
    out: list[Target] = []
    echo, add = run.get("echo"), run.get("memory.add")
    if echo and add:
        out.append(
            Target(
                f"memory.add vs broker ceiling, c={args.concurrency}",
                f"{add.throughput:.0f}/s / {echo.throughput:.0f}/s",
                add.throughput / echo.throughput,
                0.4,
                True,
            )
        )
    if add:
        out.append(Target("total CPU per memory.add, all processes", _cpu_shown(add), add.cpu_total, 4, False, " ms"))
    direct, chat = run.get("direct backend"), run.get("llm.chat")
    if direct and chat:
        out.append(
            Target(
                f"llm.chat through aiosd vs direct, c={args.llm_concurrency}",
                f"{chat.throughput:.0f}/s / {direct.throughput:.0f}/s",
                chat.throughput / direct.throughput,
                0.5,
                True,
            )
        )
    if chat:
        kernel = chat.cpu.get("scheduler", 0.0) + chat.cpu.get("database", 0.0)
        shown = f"scheduler {chat.cpu.get('scheduler', 0):.2f} + database {chat.cpu.get('database', 0):.2f}"
        out.append(Target("kernel CPU (scheduler + database) per llm.chat", shown, kernel, 8, False, " ms"))
    if "d" in results:
        empty, full = results["d"]
        shown = (
            f"{full.throughput:.0f}/s / {empty.throughput:.0f}/s (CPU {full.cpu_total:.2f} vs {empty.cpu_total:.2f} ms)"
        )
        out.append(
            Target(
                f"memory.add with {args.history} in db vs empty db",
                shown,
                full.throughput / empty.throughput,
                0.9,
                True,
            )
        )
    echo1, add1 = run.get("echo c=1"), run.get("memory.add c=1")
    if echo1 and add1:
        out.append(
            Target(
                "p50 added latency at c=1 over the broker ceiling",
                f"{add1.p50:.2f} - {echo1.p50:.2f} ms",
                add1.p50 - echo1.p50,
                5,
                False,
                " ms",
            )
        )
    return out


def _cpu_shown(r: Run) -> str:
    return " + ".join(f"{k} {v:.2f}" for k, v in r.cpu.items())


def _phase(
    phase: str, scratch: Scratch, args: argparse.Namespace, base: CpuMeter, prefetch: int, history: dict[str, Any]
) -> list[Run]:
    if phase == "a":
        return phases.broker_ceiling(scratch, args, base, prefetch)
    if phase == "b":
        return phases.memory_storage(scratch, args, base)
    if phase == "c":
        return phases.llm_chat(scratch, args, base)
    return phases.with_history(scratch, args, base, history)


def with_rounds(pooled_items: list[Target], per_round: list[list[Target]]) -> list[Target]:
    """The pooled targets, each showing its figure in every round too."""
    out = []
    for t in pooled_items:
        values = [r.value for items in per_round for r in items if r.name == t.name]
        if values:
            t = replace(t, shown=f"{t.shown}; by round {', '.join(f'{v:.2f}' for v in values)}")
        out.append(t)
    return out


def _note(phase: str, args: argparse.Namespace, runs: list[Run]) -> str:
    if phase == "c":
        return f"worker capacity {args.llm_concurrency}, max_tokens 8"
    if phase == "d":
        full = runs[-1]
        return f"{args.history} completed syscalls preloaded in {full.notes.get('preload_s')}s"
    if phase == "b":
        searched = next((r.notes.get("notes_searched") for r in runs if r.label == "memory.search"), None)
        return f"memory.search ranks the agent's {searched} notes"
    return ""


def _source() -> str:
    """Where aiosd is imported from and, if it is a git checkout, its commit (``+dirty``: changed files)."""
    root = Path(aiosd.sdk.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "daemon", "sdk", "workers"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"{root} (not a git checkout)"
    return f"{root} at {sha}{' +uncommitted changes in daemon/sdk/workers' if dirty else ''}"


def _interrupt(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; what the bench started has been stopped and removed")
