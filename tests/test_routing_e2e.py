"""Cache-aware routing end to end: two programs with different long system prompts, a real scheduler
and two real ``aiosd worker --backend sglang`` processes, each in front of its own simulated GPU
(``bench/sim``). Each program's calls land on one worker, the two programs on different workers,
and the simulators see the prefix-cache hits that this placement is for.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiosd.sdk import Client

from .harness import ROOT, WorkerProcess, World

#: Two agent types, each with its own long system prompt (~3,000 tokens in the simulator).
SYSTEMS = {
    "A": "You are the planner of team A. Think step by step and call tools. " * 180,
    "B": "You are the reviewer of team B. Check every claim against the sources. " * 170,
}
STEPS = 4


@pytest.fixture
def simulators(tmp_path: Path) -> Iterator[list[str]]:
    """Two simulated H100s in one subprocess, in real time (a 32-token answer takes ~0.2 s)."""
    log = (tmp_path / "sim.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.sim", "--count", "2", "--port", "0", "--time-scale", "1.0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    try:
        yield _ready_urls(proc)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _ready_urls(proc: subprocess.Popen[bytes]) -> list[str]:
    assert proc.stdout is not None
    urls: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode().strip()
        if line == "bench.sim ready all":
            return urls
        if line.startswith("bench.sim ready "):
            urls.append(line.split()[-1])
        elif not line and proc.poll() is not None:
            break
    raise AssertionError(f"the simulators did not start (exit {proc.poll()})")


def _step(client: Client, program: str, history: list[dict[str, Any]], step: int) -> Any:
    """One ReAct-like step: the program's conversation so far plus a new observation."""
    history.append({"role": "user", "content": f"Observation {step} of {program}: " + "data " * 40})
    reply = client.request(
        "llm.chat", {"messages": list(history), "max_tokens": 32, "temperature": 0}, program=program, timeout=120
    )
    assert reply.status.value == "ok", reply.error
    history.append({"role": "assistant", "content": reply.result["text"]})
    return reply


def test_two_programs_land_on_the_workers_holding_their_prefixes(
    world: World, make_scheduler: Any, simulators: list[str], tmp_path: Path
) -> None:
    make_scheduler(policy="las", routing="cache_aware").start()
    workers = [
        WorkerProcess(
            world,
            tmp_path,
            worker_id=f"gpu{i}",
            backend="sglang",
            backend_url=url,
            capacity="4",
            heartbeat_interval="0.5",
        )
        for i, url in enumerate(simulators)
    ]
    try:
        for worker in workers:
            worker.start()
        histories = {name: [{"role": "system", "content": text}] for name, text in SYSTEMS.items()}
        placed: dict[str, list[str]] = {"A": [], "B": []}
        cached: dict[str, list[int]] = {"A": [], "B": []}
        with Client(world.amqp_url(), timeout=120) as client, ThreadPoolExecutor(2) as pool:
            for step in range(STEPS):  # both programs step at once, as concurrent agents would
                futures = {name: pool.submit(_step, client, name, histories[name], step) for name in SYSTEMS}
                for name, future in futures.items():
                    reply = future.result()
                    placed[name].append(reply.result["worker"])
                    cached[name].append(reply.usage.cached_tokens)
        stats = [httpx.get(f"{url}/sim/stats", timeout=10).json() for url in simulators]
    finally:
        for worker in workers:
            worker.stop()
    assert len(set(placed["A"])) == 1 and len(set(placed["B"])) == 1, placed  # each program stays on one worker
    assert placed["A"][0] != placed["B"][0], placed  # the two prefixes are spread over the two workers
    for name in SYSTEMS:  # every step after the first reuses the program's whole conversation so far
        assert all(tokens > 2500 for tokens in cached[name][1:]), cached
    assert [s["requests_finished"] for s in stats] == [STEPS, STEPS]
    assert all(s["cache_hit_rate"] > 0.6 for s in stats), stats
