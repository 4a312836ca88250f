"""Tasks and batches at scale: submit time, tasks/s through a trivial program, memory flat with the backlog.

    .venv/bin/python bench/tasks.py --private-db [--submit 100000] [--run 2000]

Prints, in one run:
(1) ``aiosd batch submit`` of a ``--submit``-line JSONL file: wall time, lines/s,
    and the submitting process's peak memory;
(2) the scheduler's and an idle runner's memory (RSS) before and after that
    backlog is queued -- flat, since queued tasks wait in RabbitMQ;
(3) a ``--run``-task batch of the ``echo`` program (no syscalls of its own: each
    task costs its task.start and task.finish) through one scheduler and one
    runner: tasks/s and CPU milliseconds per task of each process (runner,
    scheduler, RabbitMQ, database server), read from ``/proc``.
The backlog of (1) is cancelled before (3) runs, so (3) measures the task path alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from procstat import CpuMeter, broker_pid, database_pid
from scratch import Env, Scratch


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--submit", type=int, default=100_000, help="lines of the big batch (default 100000)")
    parser.add_argument("--run", type=int, default=2000, help="tasks of the measured echo batch (default 2000)")
    parser.add_argument("--capacity", type=int, default=16, help="the runner's capacity (default 16)")
    parser.add_argument("--private-db", action="store_true", help="run against a private database server")
    return parser.parse_args()


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def jsonl(path: Path, lines: int) -> Path:
    with path.open("w") as out:
        for i in range(lines):
            out.write(json.dumps({"input": {"value": i, "text": f"document {i} about queues and leases"}}) + "\n")
    return path


def cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "aiosd.daemon.admin.cli", *args]
    return subprocess.run(argv, env=env.aiosd_env(), capture_output=True, text=True, check=False)


def submit(env: Env, path: Path) -> tuple[str, float, int]:
    """Submit ``path`` with the CLI; (batch id, seconds, the CLI's peak RSS in KiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = cli(env, "batch", "submit", str(path), "--program", "echo", "--agent", "guest", "--json")
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"batch submit failed: {done.stderr}")
    peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
    return str(json.loads(done.stdout)["batch"]), took, peak


def wait_finished(env: Env, batch_id: str, timeout: float = 1800.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        figures = json.loads(cli(env, "batch", "status", batch_id, "--json").stdout)
        if figures["state"] in ("finished", "cancelled"):
            return dict(figures)
        time.sleep(0.5)
    raise SystemExit(f"batch {batch_id} did not finish in {timeout:g}s")


def main() -> None:
    args = parse()
    with Scratch() as scratch:
        db_pid = scratch.private_database(database_pid()) if args.private_db else database_pid()
        print(f"machine: {os.cpu_count()} CPUs; runner capacity {args.capacity}; database {scratch.mongo_url}")
        backlog(scratch, args)
        throughput(scratch, args, db_pid)


def backlog(scratch: Scratch, args: argparse.Namespace) -> None:
    """(1) and (2): submit the big batch with no runner, then see what the backlog costs in memory."""
    env = scratch.env("backlog")
    scheduler = scratch.aiosd("scheduler", env)
    before = rss_kib(scheduler.pid)
    path = jsonl(scratch.logs / "big.jsonl", args.submit)
    _, took, peak = submit(env, path)
    runner = scratch.aiosd("runner", env, "--capacity", "1")
    time.sleep(2.0)
    after, held = rss_kib(scheduler.pid), rss_kib(runner.pid)
    runner.stop()
    scheduler.stop()
    print(f"\n(1) batch submit of {args.submit} lines: {took:.1f} s, {args.submit / took:.0f} lines/s,")
    print(f"    peak memory of the submitting process {peak / 1024:.0f} MiB (file {path.stat().st_size >> 20} MiB)")
    print(f"(2) scheduler RSS {before / 1024:.0f} MiB before the backlog, {after / 1024:.0f} MiB with", end=" ")
    print(f"{args.submit} tasks queued; a runner with that backlog: {held / 1024:.0f} MiB")


def throughput(scratch: Scratch, args: argparse.Namespace, db_pid: int) -> None:
    """(3): a batch of the trivial program through one scheduler and one runner, with CPU per task."""
    env = scratch.env("run")
    scheduler = scratch.aiosd("scheduler", env)
    runner = scratch.aiosd("runner", env, "--capacity", str(args.capacity))
    meter = CpuMeter({"runner": runner.pid, "scheduler": scheduler.pid, "rabbitmq": broker_pid()})
    meter.add("database", db_pid)
    small = jsonl(scratch.logs / "small.jsonl", args.run)
    before = meter.sample()
    started = time.perf_counter()
    run_id, _, _ = submit(env, small)
    figures = wait_finished(env, run_id)
    took = time.perf_counter() - started
    cpu, other = CpuMeter.per_call(before, meter.sample(), args.run)
    print(f"\n(3) {args.run} echo tasks: {figures['counts']['succeeded']} succeeded in {took:.1f} s,", end=" ")
    print(f"{args.run / took:.0f} tasks/s (submit and status polling included)")
    shown = "  ".join(f"{name} {ms:.2f}" for name, ms in cpu.items())
    print(f"    CPU ms per task: {shown}  total {sum(cpu.values()):.2f}  (other work on the machine {other:.2f})")


if __name__ == "__main__":
    main()
