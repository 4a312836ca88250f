"""Agents through an aiosd worker in front of llama_cpp.server (default settings) vs the same agents direct.

Starts ``python -m llama_cpp.server`` with the bundled SmolLM2 and its default
settings (``--interrupt_requests True``), then runs ``--agents`` concurrent
agents, each making ``--calls`` greedy calls:

- direct, unstreamed (the reference answers);
- direct, streamed (what the worker used to do: the server cuts streams short);
- through aiosd: scheduler + ``aiosd worker --backend openai`` (scratch vhost
  and database, removed afterwards).

It prints agents/min and how many answers equal the reference, then the
streamed vs unstreamed throughput of one agent, direct and through the
``openai`` backend::

    .venv/bin/python bench/worker_truth.py --agents 16 --calls 2 --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import httpx
import pymongo

from aiosd.sdk import Client
from aiosd.workers.backends.base import ChatRequest, Message
from aiosd.workers.backends.llamacpp import bundled_gguf
from aiosd.workers.backends.openai import OpenAIBackend

HOST = "127.0.0.1"
TOPICS = [
    "cooking",
    "sleep",
    "writing",
    "running",
    "saving money",
    "reading",
    "gardening",
    "learning a language",
    "public speaking",
    "travel",
    "painting",
    "chess",
    "swimming",
    "studying",
    "cycling",
    "photography",
]


def question(agent: int, call: int) -> str:
    return f"Give one short tip about {TOPICS[(agent + call) % len(TOPICS)]}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=16)
    parser.add_argument("--calls", type=int, default=2, help="calls per agent, one after the other")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--single-calls", type=int, default=24, help="calls of the one-agent stream comparison")
    parser.add_argument("--only-stream-cost", action="store_true", help="skip the agents, measure streaming only")
    args = parser.parse_args()
    port = _free_port()
    url = f"http://{HOST}:{port}"
    server = _start(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(bundled_gguf()),
            "--host",
            HOST,
            "--port",
            str(port),
            "--n_ctx",
            "2048",
        ],
        lambda: _answers(f"{url}/v1/models"),
        "llama_cpp.server",
    )
    try:
        if args.only_stream_cost:
            _stream_cost(args, url)
            return
        body = {"max_tokens": args.max_tokens, "temperature": 0, "top_p": 1.0}
        ask = [(a, c) for a in range(args.agents) for c in range(args.calls)]
        reference, direct_s = _agents(args, lambda a, c: _direct(url, question(a, c), body, stream=False))
        streamed, streamed_s = _agents(args, lambda a, c: _direct(url, question(a, c), body, stream=True))
        kernel, kernel_s, worker_log = _through_aiosd(args, url, body)
        print(f"{args.agents} agents x {args.calls} calls, max_tokens={args.max_tokens}, llama_cpp.server defaults")
        for label, answers, seconds in [
            ("direct (unstreamed)", reference, direct_s),
            ("direct (streamed)", streamed, streamed_s),
            ("aiosd worker", kernel, kernel_s),
        ]:
            same = sum(answers[k] == reference[k] for k in ask)
            print(f"  {label:20} {args.agents / seconds * 60:7.1f} agents/min   {same}/{len(ask)} answers match direct")
        events = [json.loads(line) for line in worker_log.read_text().splitlines() if line.startswith("{")]
        changes = sum(e.get("event") == "backend_health_changed" for e in events)
        failed = sum(e.get("event") == "call_failed" for e in events)
        print(f"  worker: {changes} health changes, {failed} failed attempts")
        _stream_cost(args, url)
    finally:
        server.terminate()
        server.wait(30)


def _agents(args: argparse.Namespace, call: Callable[[int, int], str]) -> tuple[dict[tuple[int, int], str], float]:
    """Every agent makes its calls in turn; all agents at once. Returns answers and wall seconds."""

    def agent(a: int) -> list[tuple[tuple[int, int], str]]:
        return [((a, c), call(a, c)) for c in range(args.calls)]

    started = time.perf_counter()
    with ThreadPoolExecutor(args.agents) as pool:
        results = [pair for pairs in pool.map(agent, range(args.agents)) for pair in pairs]
    return dict(results), time.perf_counter() - started


def _direct(url: str, text: str, body: dict[str, object], stream: bool) -> str:
    payload = {**body, "messages": [{"role": "user", "content": text}], "stream": stream}
    with httpx.Client(base_url=url, timeout=600) as client:
        if not stream:
            return str(client.post("/v1/chat/completions", json=payload).json()["choices"][0]["message"]["content"])
        parts = []
        try:
            with client.stream("POST", "/v1/chat/completions", json=payload) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        for choice in json.loads(line[6:]).get("choices") or ():
                            parts.append((choice.get("delta") or {}).get("content") or "")
        except httpx.RemoteProtocolError:
            pass  # an interrupted stream may also end in a broken chunk: a naive client keeps what it got
        return "".join(parts)


def _through_aiosd(
    args: argparse.Namespace, backend_url: str, body: dict[str, object]
) -> tuple[dict[tuple[int, int], str], float, Path]:
    mgmt = httpx.Client(
        base_url=f"http://{HOST}:{os.environ.get('AIOSD_AMQP_MGMT_PORT', '15672')}/api", auth=("guest", "guest")
    )
    vhost = f"aiosd-bench-{uuid.uuid4().hex[:8]}"
    db = vhost.replace("-", "_")
    mongo_url = f"mongodb://{HOST}:{os.environ.get('AIOSD_MONGO_PORT', '27017')}/"
    mgmt.put(f"/vhosts/{vhost}").raise_for_status()
    mgmt.put(f"/permissions/{vhost}/guest", json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
    amqp = f"amqp://guest:guest@{HOST}:{os.environ.get('AIOSD_AMQP_PORT', '5672')}/{quote(vhost, safe='')}"
    env = {
        **os.environ,
        "AIOSD_AMQP_URL": amqp,
        "AIOSD_MONGO_URL": mongo_url,
        "AIOSD_MONGO_DB": db,
        "AIOSD_LOG_FORMAT": "json",
    }
    worker_env = {**env, "AIOSD_WORKER_ID": "bench-openai", "AIOSD_BACKEND": "openai", "AIOSD_BACKEND_URL": backend_url}
    logs = Path(tempfile.mkdtemp(prefix="aiosd-bench-"))
    procs = [_aiosd("scheduler", env, logs), _aiosd("worker", worker_env, logs)]
    try:

        def call(a: int, c: int) -> str:
            with Client(amqp, timeout=600) as client:
                reply = client.request("llm.chat", {**body, "messages": [{"role": "user", "content": question(a, c)}]})
            return str(reply.result["text"]) if reply.status.value == "ok" else f"<error {reply.error}>"

        answers, seconds = _agents(args, call)
        return answers, seconds, logs / "worker.log"
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(120)
        mgmt.delete(f"/vhosts/{vhost}")
        pymongo.MongoClient(mongo_url).drop_database(db)


def _stream_cost(args: argparse.Namespace, url: str) -> None:
    """One agent, the same calls streamed and unstreamed (interleaved to share the noise)."""
    body = {"max_tokens": args.max_tokens, "temperature": 0, "top_p": 1.0}
    times: dict[str, float] = {
        "direct unstreamed": 0.0,
        "direct streamed": 0.0,
        "backend auto (unstreamed)": 0.0,
        "backend stream=True": 0.0,
    }
    auto, forced = OpenAIBackend(url), OpenAIBackend(url, stream=True)

    async def via(backend: OpenAIBackend, text: str) -> None:
        await backend.chat(
            ChatRequest(messages=(Message(role="user", content=text),), temperature=0.0, max_tokens=args.max_tokens)
        )

    async def run() -> None:
        await auto.start()
        await forced.start()
        for i in range(args.single_calls):
            text = question(i, 0)
            jobs: list[tuple[str, Awaitable[object]]] = [
                ("direct unstreamed", asyncio.to_thread(_direct, url, text, body, False)),
                ("direct streamed", asyncio.to_thread(_direct, url, text, body, True)),
                ("backend auto (unstreamed)", via(auto, text)),
                ("backend stream=True", via(forced, text)),
            ]
            # The server caches the last prompt: rotate which mode goes first (and pays the prefill).
            jobs = jobs[i % len(jobs) :] + jobs[: i % len(jobs)]
            for label, job in jobs:  # coroutines start only when awaited, one after the other
                started = time.perf_counter()
                await job
                times[label] += time.perf_counter() - started
        await auto.close()
        await forced.close()

    asyncio.run(run())
    base = times["direct unstreamed"]
    print(f"1 agent, {args.single_calls} calls each, max_tokens={args.max_tokens}:")
    for label, seconds in times.items():
        print(f"  {label:26} {args.single_calls / seconds * 60:7.1f} calls/min   ({(base / seconds - 1) * 100:+.1f}%)")


def _aiosd(command: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    log = logs / f"{command}.log"
    out = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "aiosd.daemon.admin.cli", command], env=env, stdout=out, stderr=out)
    _wait(proc, lambda: f"{command}_ready" in log.read_text(errors="replace"), f"{command} (see {log})")
    return proc


def _start(command: list[str], ready: Callable[[], bool], name: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(proc, ready, name)
    return proc


def _wait(proc: subprocess.Popen[bytes], ready: Callable[[], bool], name: str) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"{name} did not start")
        time.sleep(0.2)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    main()
