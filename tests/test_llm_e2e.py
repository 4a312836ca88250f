"""llm.chat end to end: agent -> RabbitMQ -> scheduler -> real worker -> real SmolLM2 -> reply."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiosd.sdk import Client

from .harness import WorkerProcess, World, lifetime_usage
from .scripted_worker import wait_until

QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name three colours of the rainbow."},
]


def start_worker(world: World, tmp_path: Path, started: list[Any], name: str, **settings: str) -> WorkerProcess:
    w = WorkerProcess(world, tmp_path, worker_id=name, heartbeat_interval="0.5", **settings)
    started.append(w)
    return w.start()


def greedy(max_tokens: int = 24) -> dict[str, Any]:
    return {"messages": QUESTION, "max_tokens": max_tokens, "temperature": 0}


def test_chat_answer_and_usage(world: World, make_scheduler: Any, tmp_path: Path) -> None:
    started: list[Any] = []
    make_scheduler().start()
    try:
        start_worker(world, tmp_path, started, "cpu0")
        with Client(world.amqp_url(), timeout=120) as client:
            reply = client.request("llm.chat", greedy())
    finally:
        for w in started:
            w.stop()
    assert reply.status.value == "ok", reply.error
    assert reply.result["text"].strip() and reply.result["worker"] == "cpu0"
    assert reply.result["finish_reason"] in ("stop", "length")
    assert reply.usage.prompt_tokens > 10 and reply.usage.completion_tokens > 0
    assert reply.timings.run_ms > 0
    usage = lifetime_usage(world.db(), "guest")
    assert usage is not None and usage["completion_tokens"] == reply.usage.completion_tokens


def test_sliced_generation_equals_unsliced(world: World, make_scheduler: Any, tmp_path: Path) -> None:
    """Round robin with 3-token slices (snapshot, re-queue, resume) loses nothing under greedy decoding."""
    started: list[Any] = []
    try:
        start_worker(world, tmp_path, started, "cpu0")
        fifo = make_scheduler(policy="fifo").start()
        with Client(world.amqp_url(), timeout=120) as client:
            whole = client.request("llm.chat", greedy())
        fifo.stop()
        make_scheduler(policy="round_robin", slice_tokens="3").start()
        with Client(world.amqp_url(), timeout=120) as client:
            sliced = client.request("llm.chat", greedy())
    finally:
        for w in started:
            w.stop()
    assert whole.status.value == sliced.status.value == "ok"
    assert whole.result["slices"] == 1 and sliced.result["slices"] >= 3
    assert sliced.result["text"] == whole.result["text"]
    assert sliced.usage.completion_tokens == whole.usage.completion_tokens


def test_kill_9_worker_holding_leases(world: World, make_scheduler: Any, tmp_path: Path) -> None:
    """Every call still completes exactly once after a worker dies mid-call."""
    started: list[Any] = []
    sched = make_scheduler(lease_ttl="6", worker_timeout="3").start()
    try:
        victim = start_worker(world, tmp_path, started, "victim")
        survivor = start_worker(world, tmp_path, started, "survivor")
        with Client(world.amqp_url(), timeout=180) as client, ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(client.request, "llm.chat", greedy(16)) for _ in range(6)]
            held = wait_until(
                lambda: [d["id"] for d in world.db().syscalls.find({"state": "leased", "lease.worker": "victim"})],
                timeout=60,
            )
            victim.signal(signal.SIGKILL)
            replies = [f.result(180) for f in futures]
            assert survivor.proc is not None and survivor.proc.poll() is None
    finally:
        for w in started:
            w.stop()
    assert all(r.status.value == "ok" for r in replies), [r.error for r in replies]
    ids = [r.id for r in replies]
    results = list(world.db().results.find({"id": {"$in": ids}}))
    assert sorted(r["id"] for r in results) == sorted(ids)  # exactly one result each
    rescued = [r for r in replies if r.id in held]
    assert rescued and all(r.result["worker"] == "survivor" for r in rescued)
    assert sched.wait_for("worker_dead")["worker"] == "victim"


def test_json_mode_gives_valid_json_or_clear_error(world: World, make_scheduler: Any, tmp_path: Path) -> None:
    started: list[Any] = []
    make_scheduler().start()
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
    try:
        start_worker(world, tmp_path, started, "cpu0")
        with Client(world.amqp_url(), timeout=120) as client:
            replies = [client.request("llm.chat", {**greedy(48), "response_format": fmt}) for fmt in ("json", schema)]
    finally:
        for w in started:
            w.stop()
    for reply in replies:
        if reply.status.value == "ok":
            json.loads(reply.result["text"])
        else:
            assert reply.error is not None and reply.error.code.value == "invalid_args" and reply.error.message
    ok = [r for r in replies if r.status.value == "ok"]
    assert ok, "constrained decoding should produce JSON for at least one of the formats"
