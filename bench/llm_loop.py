"""Benchmark llm.chat through the whole kernel against the bare backend.

Runs the same greedy calls (a) directly on the embedded llama.cpp backend in
this process and (b) through RabbitMQ, the scheduler and a CPU worker, and
prints per-call latency and the kernel's overhead (b - a). Uses a scratch
vhost and database, removed afterwards:

    .venv/bin/python bench/llm_loop.py --calls 20 --max-tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import pymongo

from aiosd.sdk import Client
from aiosd.workers.backends import create_backend
from aiosd.workers.backends.base import ChatRequest, Message

HOST = "127.0.0.1"
MESSAGES = [{"role": "user", "content": "Give one tip for writing clear code."}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    direct = asyncio.run(_direct(args.calls, args.max_tokens))
    kernel = _through_kernel(args.calls, args.max_tokens)
    _print("direct backend", direct)
    _print("through aiosd", kernel)
    overhead = statistics.median(kernel) - statistics.median(direct)
    print(f"kernel overhead (median)  {overhead:.1f} ms per call")


async def _direct(calls: int, max_tokens: int) -> list[float]:
    backend = create_backend("llamacpp")
    await backend.start()
    request = ChatRequest(messages=tuple(Message(**m) for m in MESSAGES), max_tokens=max_tokens, temperature=0.0)
    out = []
    try:
        for _ in range(calls):
            start = time.perf_counter()
            await backend.chat(request)
            out.append((time.perf_counter() - start) * 1000)
    finally:
        await backend.close()
    return out


def _through_kernel(calls: int, max_tokens: int) -> list[float]:
    mgmt = httpx.Client(
        base_url=f"http://{HOST}:{os.environ.get('AIOSD_AMQP_MGMT_PORT', '15672')}/api", auth=("guest", "guest")
    )
    vhost = f"aiosd-bench-{uuid.uuid4().hex[:8]}"
    db = vhost.replace("-", "_")
    mongo_url = f"mongodb://{HOST}:{os.environ.get('AIOSD_MONGO_PORT', '27017')}/"
    mgmt.put(f"/vhosts/{vhost}").raise_for_status()
    mgmt.put(f"/permissions/{vhost}/guest", json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
    url = f"amqp://guest:guest@{HOST}:{os.environ.get('AIOSD_AMQP_PORT', '5672')}/{quote(vhost, safe='')}"
    env = {
        **os.environ,
        "AIOSD_AMQP_URL": url,
        "AIOSD_MONGO_URL": mongo_url,
        "AIOSD_MONGO_DB": db,
        "AIOSD_LOG_FORMAT": "json",
    }
    procs = [
        _start("scheduler", env, "scheduler_ready"),
        _start("worker", {**env, "AIOSD_WORKER_ID": "bench"}, "worker_ready"),
    ]
    try:
        with Client(url, timeout=300) as client:
            client.call("llm.chat", {"messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0})  # warm-up
            out = []
            for _ in range(calls):
                start = time.perf_counter()
                client.call("llm.chat", {"messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0})
                out.append((time.perf_counter() - start) * 1000)
            return out
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(120)
        mgmt.delete(f"/vhosts/{vhost}")
        pymongo.MongoClient(mongo_url).drop_database(db)


def _start(command: str, env: dict[str, str], ready: str) -> subprocess.Popen[bytes]:
    log = Path(tempfile.gettempdir()) / f"aiosd-bench-{command}.log"
    out = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "aiosd.daemon.admin.cli", command], env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 120
    while ready not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"{command} did not start; see {log}")
        time.sleep(0.1)
    return proc


def _print(label: str, ms: list[float]) -> None:
    ms = sorted(ms)
    print(
        f"{label:16} p50 {statistics.median(ms):7.1f} ms   p90 {ms[int(len(ms) * 0.9) - 1]:7.1f} ms   ({len(ms)} calls)"
    )


if __name__ == "__main__":
    main()
