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


def test_an_interactive_call_gets_a_worker_of_its_own(
    world: World, make_scheduler: Any, simulators: list[str], tmp_path: Path
) -> None:
    """Two long batch calls run, one per worker; an interactive call opens the interactive lane: the worker
    it reserves stops its batch call (revoked, run again on the other worker) and serves the interactive
    call alone."""
    make_scheduler(policy="las", routing="cache_aware", interactive_window="30").start()
    workers = [
        WorkerProcess(world, tmp_path, worker_id=f"gpu{i}", backend="sglang", backend_url=url, capacity="4")
        for i, url in enumerate(simulators)
    ]
    try:
        for worker in workers:
            worker.start()
        _until(lambda: world.db().workers.count_documents({"alive": True}) == 2, "both workers registered")
        with Client(world.amqp_url(), timeout=120) as client, ThreadPoolExecutor(2) as pool:
            batch = [
                pool.submit(client.request, "llm.chat", _chat(SYSTEMS[name], 600), timeout=120) for name in SYSTEMS
            ]
            _until(lambda: [_stats(url)["running"] for url in simulators] == [1, 1], "a batch call on each GPU")
            started = time.monotonic()
            interactive = client.request("llm.chat", _chat("You are the help desk.", 16), priority=9, timeout=60)
            waited = time.monotonic() - started
            replies = [f.result(120) for f in batch]
        stats = {f"gpu{i}": _stats(url) for i, url in enumerate(simulators)}
    finally:
        for worker in workers:
            worker.stop()
    assert interactive.status.value == "ok" and all(r.status.value == "ok" for r in replies)
    lane = interactive.result["worker"]
    other = next(w for w in stats if w != lane)
    assert [r.result["worker"] for r in replies] == [other, other]  # the revoked call ran again there
    assert stats[lane]["requests_aborted"] == 1 and stats[lane]["requests_finished"] == 1, stats
    assert stats[other]["requests_aborted"] == 0 and stats[other]["requests_finished"] == 2, stats
    assert waited < 2.0  # not behind a 600-token answer (3.6 s on its own)


def _chat(system: str, output: int) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": f"Go. [[sim:out={output}]]"}]
    return {"messages": messages, "max_tokens": output + 8, "temperature": 0}


def _stats(url: str) -> Any:
    return httpx.get(f"{url}/sim/stats", timeout=10).json()


def _until(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)
