"""Backend conformance: every backend the tests can start for real tells the truth.

Subjects: llama-cpp-python's OpenAI-compatible server at its *default* settings
(``--interrupt_requests True``: it cuts a streamed generation short when another
request arrives, and serves ``/v1/models`` behind its model lock) driven by the
``openai`` backend; the embedded ``llamacpp`` backend; the SGLang contract
server (``sglang``); and the OpenAI stand-in that copies llama_cpp.server's
interrupting and queuing with a deterministic model (``openai``).

For each, calls run concurrently through the worker's :class:`Engine` while
heartbeat probes (and, for servers, a foreign client's probes) fire during the
generations: every answer equals a direct, non-concurrent call (greedy), finish
reasons and usage are right, and health never flips while the backend is merely
busy. Streams that a server cuts short are failed attempts, never answers. A
server killed mid-generation gives a retryable failure (and the worker turns
unhealthy); through a real scheduler and worker the lease is retried and the
agent gets a clear error. The embedded backend has no server to kill.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiosd.sdk import Client
from aiosd.sdk.cluster import Lease, Outcome
from aiosd.sdk.protocol import ErrorCode, utcnow
from aiosd.workers.backends.base import Backend
from aiosd.workers.backends.llamacpp import LlamaCppBackend
from aiosd.workers.backends.openai import OpenAIBackend
from aiosd.workers.backends.sglang import SGLangBackend
from aiosd.workers.calls import chat_request
from aiosd.workers.config import WorkerConfig
from aiosd.workers.engine import Engine

from .harness import WorkerProcess, World

sys.path.insert(0, str(Path(__file__).parent / "backends"))
from openai_standin import OpenAIStandin
from servers import Server, contract_server, llama_server, standin_server
from sglang_contract import CHATML, ContractServer

#: Short, greedy calls: some end by ``length``, some by ``stop``.
SMOLLM_CALLS = [
    {"content": "What is the capital of France?", "max_tokens": 12},
    {"content": "What is 2+2?", "max_tokens": 16},
    {"content": "Name a fruit.", "max_tokens": 12},
    {"content": "Say hello.", "max_tokens": 10},
    {"content": "What colour is the sky?", "max_tokens": 8},
    {"content": "Count to three.", "max_tokens": 8},
]
ECHO_CALLS = [{"content": f"question number {i}", "max_tokens": 12 if i % 2 else 40} for i in range(8)]

#: Heartbeat probe bound, as a worker with heartbeat_interval=0.5 uses it.
PROBE_TIMEOUT = 0.5


def args(call: dict[str, Any]) -> dict[str, Any]:
    """``llm.chat`` arguments of a greedy call."""
    return {
        "messages": [{"role": "user", "content": call["content"]}],
        "max_tokens": call["max_tokens"],
        "temperature": 0,
    }


def lease(i: int, call: dict[str, Any]) -> Lease:
    return Lease(
        lease_id=f"lease-{i}",
        key=f"agent/m{i}",
        agent="agent",
        call_id=f"c{i}",
        args=args(call),
        expires_at=utcnow() + timedelta(minutes=5),
    )


@dataclass(frozen=True)
class Answer:
    """What a direct call answered: the reference for the same call through aiosd."""

    text: str
    finish_reason: str
    completion_tokens: int


@dataclass
class Subject:
    """One backend under test: how to build it, its calls, its direct reference and a foreign probe."""

    name: str
    make: Callable[..., Backend]
    calls: list[dict[str, Any]]
    direct: Callable[[dict[str, Any]], Awaitable[Answer]]
    foreign_probe: str | None = None  # a URL another client of the server polls
    shared: bool = False  # the backend outlives the test (a loaded model): do not close it


async def direct_openai(url: str, call: dict[str, Any]) -> Answer:
    """The call made directly to an OpenAI-compatible server, unstreamed, as an agent would."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        body = {**args(call), "model": model, "top_p": 1.0}
        data = (await client.post("/v1/chat/completions", json=body)).json()
    choice = data["choices"][0]
    return Answer(choice["message"]["content"], choice["finish_reason"], data["usage"]["completion_tokens"])


def via_backend(make: Callable[[], Backend], close: bool) -> Callable[[dict[str, Any]], Awaitable[Answer]]:
    """Direct reference through a backend of the same kind, one call at a time."""

    async def direct(call: dict[str, Any]) -> Answer:
        backend = make()
        await backend.start()
        try:
            result = await backend.chat(chat_request(lease(0, call)))
        finally:
            if close:
                await backend.close()
        return Answer(result.text, result.finish_reason, result.usage.completion_tokens)

    return direct


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    config = {"chat_template": CHATML, "bos_token": None, "eos_token": {"content": "<|im_end|>"}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="module", params=["llama_cpp.server", "llamacpp", "sglang", "openai-standin"])
def subject(request: pytest.FixtureRequest, model_folder: Path) -> Iterator[Subject]:
    """Each backend with a real server (or model) behind it, started once per module."""
    name = request.param
    if name == "llama_cpp.server":
        with llama_server() as server:
            url = server.url
            yield Subject(
                name,
                lambda **kw: OpenAIBackend(url, context_length=2048, **kw),
                SMOLLM_CALLS,
                lambda call: direct_openai(url, call),
                foreign_probe=f"{url}/v1/models",
            )
    elif name == "llamacpp":
        backend = LlamaCppBackend()
        yield Subject(name, lambda **kw: backend, SMOLLM_CALLS, via_backend(lambda: backend, False), shared=True)
        asyncio.run(backend.close())
    elif name == "sglang":
        with ContractServer(str(model_folder), token_delay=0.002) as contract:
            reference = via_backend(lambda: SGLangBackend(contract.url, stream=False), True)
            yield Subject(
                name,
                lambda **kw: SGLangBackend(contract.url, **kw),
                ECHO_CALLS,
                reference,
                foreign_probe=f"{contract.url}/health",
            )
    else:
        with OpenAIStandin(interrupt=True, token_delay=0.002) as standin:
            url = standin.url
            yield Subject(
                name,
                lambda **kw: OpenAIBackend(url, **kw),
                ECHO_CALLS,
                lambda call: direct_openai(url, call),
                foreign_probe=f"{url}/v1/models",
            )


def engine_for(backend: Backend, kind: str, capacity: int) -> Engine:
    config = WorkerConfig(worker_id=f"conformance-{kind}", host="localhost", backend=kind, capacity=capacity)
    return Engine(config, backend)


@dataclass
class Run:
    """Outcomes of concurrent leases and what every probe during them said."""

    outcomes: list[Outcome]
    healthy: list[bool]
    metrics: dict[str, float]


async def run_concurrently(subject: Subject, engine: Engine, leases: list[Lease]) -> Run:
    """All ``leases`` at once, with a heartbeat probe and a foreign probe every 0.1 s until they finish."""
    await engine.start(timeout=30)
    tasks = [asyncio.create_task(engine.run(one)) for one in leases]
    healthy: list[bool] = []
    metrics: dict[str, float] = {}
    foreign: list[asyncio.Task[Any]] = []
    async with httpx.AsyncClient(timeout=60) as client:
        while not all(task.done() for task in tasks):
            if subject.foreign_probe:
                foreign.append(asyncio.create_task(client.get(subject.foreign_probe)))
            probe = await engine.probe(PROBE_TIMEOUT)
            healthy.append(probe.healthy)
            metrics = probe.metrics
            await asyncio.sleep(0.1)
        outcomes = await asyncio.gather(*tasks)
        await asyncio.gather(*foreign, return_exceptions=True)
    return Run(list(outcomes), healthy, metrics)


async def references(subject: Subject) -> list[Answer]:
    return [await subject.direct(call) for call in subject.calls]


def test_concurrent_answers_equal_direct_calls_and_health_holds(subject: Subject) -> None:
    async def scenario() -> tuple[list[Answer], Run]:
        direct = await references(subject)
        backend = subject.make()
        try:
            engine = engine_for(backend, "llamacpp" if subject.shared else backend.name, len(subject.calls))
            run = await run_concurrently(subject, engine, [lease(i, c) for i, c in enumerate(subject.calls)])
        finally:
            if not subject.shared:
                await backend.close()
        return direct, run

    direct, run = asyncio.run(scenario())
    for call, expected, outcome in zip(subject.calls, direct, run.outcomes, strict=True):
        assert outcome.status == "done", (subject.name, outcome.error_code, outcome.error_message)
        assert outcome.text == expected.text, (subject.name, call)
        assert outcome.finish_reason == expected.finish_reason, (subject.name, call)
        assert outcome.usage.completion_tokens == expected.completion_tokens > 0
        assert outcome.usage.prompt_tokens > 0
        assert outcome.usage.completion_tokens <= call["max_tokens"]
        if outcome.finish_reason == "length":
            assert outcome.usage.completion_tokens == call["max_tokens"]
    assert {o.finish_reason for o in run.outcomes} == {"stop", "length"}, "the calls must end both ways"
    assert run.healthy and all(run.healthy), f"{subject.name}: health flipped while busy: {run.healthy}"
    assert run.metrics["health_changes"] == 0.0 and run.metrics["healthy"] == 1.0


@pytest.mark.parametrize("subject", ["llama_cpp.server", "openai-standin"], indirect=True)
def test_streams_cut_short_are_failed_attempts_never_answers(subject: Subject) -> None:
    """Forced streaming against servers that interrupt streams: a cut answer is a retryable error."""
    calls = subject.calls[:4]

    async def scenario() -> tuple[list[Answer], Run, list[str], list[str]]:
        direct = [await subject.direct(call) for call in calls]
        backend, default = subject.make(stream=True), subject.make()
        try:
            run = await run_concurrently(
                subject, engine_for(backend, "openai", len(calls)), [lease(i, c) for i, c in enumerate(calls)]
            )
            await default.start()
            return direct, run, await backend.check(), await default.check()
        finally:
            await backend.close()
            await default.close()

    direct, run, warnings, default_warnings = asyncio.run(scenario())
    # The start-up check recognises llama_cpp.server and warns only when streaming is forced.
    if subject.name == "llama_cpp.server":
        assert any("--interrupt_requests False" in w for w in warnings), warnings
    else:
        assert warnings == []
    assert default_warnings == []
    failed = [o for o in run.outcomes if o.status == "error"]
    for expected, outcome in zip(direct, run.outcomes, strict=True):
        if outcome.status == "done":
            assert (outcome.text, outcome.finish_reason) == (expected.text, expected.finish_reason)
        else:
            assert outcome.retryable and outcome.error_code is ErrorCode.UNAVAILABLE
            assert "output is incomplete" in (outcome.error_message or ""), outcome.error_message
    assert failed, "the server interrupts queued streams: some must have been cut (and caught)"


async def _killed_mid_generation(backend: Backend, server: Server, call: dict[str, Any]) -> tuple[Outcome, bool]:
    engine = engine_for(backend, backend.name, 2)
    await engine.start(timeout=30)
    task = asyncio.create_task(engine.run(lease(1, call)))
    await asyncio.sleep(1.0)  # the generation is under way
    assert not task.done()
    await asyncio.to_thread(server.kill)
    outcome = await asyncio.wait_for(task, 30)
    healthy = (await engine.probe(PROBE_TIMEOUT)).healthy
    await backend.close()
    return outcome, healthy


@pytest.mark.parametrize(
    ("server_kind", "stream"),
    [
        ("llama_cpp.server", None),
        ("openai-standin", None),
        ("openai-standin", True),
        ("sglang", None),
        ("sglang", True),
    ],
)
def test_server_killed_mid_generation_is_a_retryable_failure(
    server_kind: str, stream: bool | None, model_folder: Path
) -> None:
    long_call = {"content": "Write a long story about a dragon. " * 3, "max_tokens": 400}
    if server_kind == "llama_cpp.server":
        with llama_server() as server:
            backend: Backend = OpenAIBackend(server.url, stream=stream, context_length=2048)
            outcome, healthy = asyncio.run(_killed_mid_generation(backend, server, long_call))
    elif server_kind == "openai-standin":
        with standin_server("--token-delay", "0.02") as server:
            backend = OpenAIBackend(server.url, stream=stream)
            outcome, healthy = asyncio.run(_killed_mid_generation(backend, server, long_call))
    else:
        with contract_server(model_folder, "--token-delay", "0.02") as server:
            backend = SGLangBackend(server.url, stream=stream)
            outcome, healthy = asyncio.run(_killed_mid_generation(backend, server, long_call))
    assert outcome.status == "error" and outcome.retryable, outcome
    assert outcome.error_code is ErrorCode.UNAVAILABLE
    assert "output is incomplete" in (outcome.error_message or ""), outcome.error_message
    assert outcome.text == ""
    assert not healthy, "a killed server is dead, not busy"


def test_worker_retries_a_cut_generation_then_replies_with_a_clear_error(
    world: World, make_scheduler: Any, tmp_path: Path
) -> None:
    """Through scheduler and worker: a server that dies mid-generation every time -> retried lease -> error."""
    make_scheduler(max_attempts="2").start()
    with standin_server("--drop-after", "3", "--token-delay", "0.01") as server:
        worker = WorkerProcess(
            world, tmp_path, worker_id="cut0", backend="openai", backend_url=server.url, heartbeat_interval="0.5"
        )
        worker.start()
        try:
            with Client(world.amqp_url(), timeout=90) as client:
                reply = client.request("llm.chat", args({"content": "tell me something", "max_tokens": 30}))
        finally:
            worker.stop()
    assert reply.status.value == "error" and reply.error is not None
    assert reply.error.code.value == "unavailable"
    assert "gave up after 2 attempts" in reply.error.message
    assert "output is incomplete" in reply.error.message, reply.error.message
    failures = [e for e in worker.events() if e.get("event") == "call_failed"]
    assert len(failures) == 2 and all(e["code"] == "unavailable" for e in failures)
    started = [e for e in worker.events() if e.get("event") == "lease_started"]
    assert [e["attempt"] for e in started] == [1, 2]


def test_agents_through_a_worker_match_direct_calls_on_llama_cpp_server_defaults(
    world: World, make_scheduler: Any, tmp_path: Path
) -> None:
    """The issue's scenario, small: concurrent agents through aiosd in front of llama_cpp.server (defaults)."""
    calls = SMOLLM_CALLS[:4]
    make_scheduler().start()
    with llama_server() as server:
        direct = [asyncio.run(direct_openai(server.url, call)) for call in calls]
        worker = WorkerProcess(
            world, tmp_path, worker_id="llama0", backend="openai", backend_url=server.url, heartbeat_interval="0.5"
        )
        worker.start()
        stop_probing = threading.Event()

        def probe_forever() -> None:  # another client checking the server, as monitoring does
            while not stop_probing.is_set():
                try:
                    httpx.get(f"{server.url}/v1/models", timeout=10)
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)

        prober = threading.Thread(target=probe_forever, daemon=True)
        prober.start()
        try:
            with Client(world.amqp_url(), timeout=120) as client, ThreadPoolExecutor(len(calls)) as pool:
                replies = list(pool.map(lambda c: client.request("llm.chat", args(c)), calls))
        finally:
            stop_probing.set()
            prober.join(timeout=15)
            worker.stop()
    for expected, reply in zip(direct, replies, strict=True):
        assert reply.status.value == "ok", reply.error
        assert reply.result["text"] == expected.text
        assert reply.result["finish_reason"] == expected.finish_reason
        assert reply.usage.completion_tokens == expected.completion_tokens
    assert not [e for e in worker.events() if e.get("event") == "backend_health_changed"]
