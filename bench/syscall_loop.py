"""Benchmark the syscall loop: throughput and latency of memory syscalls end to end.

Starts a scheduler in a scratch vhost and database (both removed afterwards),
drives it from several concurrent SDK callers and prints figures:

    .venv/bin/python bench/syscall_loop.py --calls 2000 --concurrency 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import httpx
import pymongo

from aiosd.sdk import Client

HOST = "127.0.0.1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=8, help="scheduler threads")
    parser.add_argument("--syscall", default="memory.add", choices=["memory.add", "memory.get", "memory.search"])
    args = parser.parse_args()
    amqp_port = int(os.environ.get("AIOSD_AMQP_PORT", "5672"))
    mgmt = httpx.Client(
        base_url=f"http://{HOST}:{os.environ.get('AIOSD_AMQP_MGMT_PORT', '15672')}/api", auth=("guest", "guest")
    )
    vhost = f"aiosd-bench-{uuid.uuid4().hex[:8]}"
    db_name = vhost.replace("-", "_")
    mongo_url = f"mongodb://{HOST}:{os.environ.get('AIOSD_MONGO_PORT', '27017')}/"
    mgmt.put(f"/vhosts/{vhost}").raise_for_status()
    mgmt.put(f"/permissions/{vhost}/guest", json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
    url = f"amqp://guest:guest@{HOST}:{amqp_port}/{quote(vhost, safe='')}"
    proc = _start_scheduler(url, mongo_url, db_name, args.threads)
    try:
        _run(url, args)
    finally:
        proc.terminate()
        proc.wait(60)
        mgmt.delete(f"/vhosts/{vhost}")
        pymongo.MongoClient(mongo_url).drop_database(db_name)


def _run(url: str, args: argparse.Namespace) -> None:
    with Client(url, timeout=120) as client:
        note = client.memory.add("seed note about benchmarks and queues")
        payload = {
            "memory.add": lambda i: {"content": f"benchmark note {i} about queues"},
            "memory.get": lambda i: {"id": note.id},
            "memory.search": lambda i: {"query": "benchmark queues", "limit": 5},
        }[args.syscall]
        latencies: list[float] = []

        def one(i: int) -> None:
            start = time.perf_counter()
            client.call(args.syscall, payload(i))
            latencies.append((time.perf_counter() - start) * 1000)

        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(one, range(args.calls)))
        wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    print(f"syscall       {args.syscall}")
    print(f"calls         {args.calls} (concurrency {args.concurrency}, scheduler threads {args.threads})")
    print(f"throughput    {args.calls / wall:.0f} syscalls/s")
    print(f"latency ms    p50 {q[49]:.1f}  p90 {q[89]:.1f}  p99 {q[98]:.1f}  max {max(latencies):.1f}")


def _start_scheduler(url: str, mongo_url: str, db: str, threads: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AIOSD_AMQP_URL": url,
        "AIOSD_MONGO_URL": mongo_url,
        "AIOSD_MONGO_DB": db,
        "AIOSD_THREADS": str(threads),
        "AIOSD_LOG_FORMAT": "json",
        "AIOSD_LOG_LEVEL": "WARNING",
    }
    log = Path(tempfile.gettempdir()) / f"{db}.log"
    out = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiosd.daemon.admin.cli", "scheduler", "--log-level", "INFO"],
        env=env,
        stdout=out,
        stderr=out,
    )
    deadline = time.monotonic() + 60
    while "scheduler_ready" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"scheduler did not start; see {log}")
        time.sleep(0.1)
    return proc


if __name__ == "__main__":
    main()
