"""The shared rules of every backend: finish reasons, streaming, health; fast, against local servers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from openai_standin import OpenAIStandin
from sglang_contract import ContractServer

from aiosd.sdk.process.settings import Settings
from aiosd.sdk.protocol import ErrorCode
from aiosd.workers.backends.base import (
    BackendBadRequest,
    ChatRequest,
    ChatResult,
    IncompleteGeneration,
    ModelInfo,
    finish_reason,
)
from aiosd.workers.backends.http import probe_health, sse_events, streaming
from aiosd.workers.backends.sglang import SGLangBackend
from aiosd.workers.calls import classify
from aiosd.workers.config import WorkerConfig, worker_config
from aiosd.workers.engine import Engine


@pytest.mark.parametrize(
    ("raw", "sliced", "expected"),
    [
        ("stop", False, "stop"),
        ("eos", False, "stop"),
        ("content_filter", False, "stop"),
        ("length", False, "length"),
        ("length", True, "slice"),
        ("stop", True, "stop"),
        ("tool_calls", False, "tool_calls"),
        ("function_call", False, "tool_calls"),
    ],
)
def test_known_finish_reasons(raw: str, sliced: bool, expected: str) -> None:
    assert finish_reason(raw, sliced=sliced, what="x", produced=3) == expected


@pytest.mark.parametrize("raw", [None, "", "abort", "interrupted", 7])
def test_no_finish_reason_is_an_incomplete_generation(raw: object) -> None:
    with pytest.raises(IncompleteGeneration, match=r"without a finish reason .* after 5 tokens") as error:
        finish_reason(raw, sliced=False, what="server", produced=5)
    code, retryable, message = classify(error.value)
    assert (code, retryable) == (ErrorCode.UNAVAILABLE, True)
    assert "output is incomplete" in message


def test_streaming_rule() -> None:
    assert [streaming(None, False), streaming(None, True)] == [False, True]  # auto: only sliced calls
    assert [streaming(True, False), streaming(False, True)] == [True, False]


def test_backend_stream_setting_reaches_the_http_backends() -> None:
    def options(**fields: Any) -> dict[str, Any]:
        return dict(worker_config(Settings(worker_id="w", backend_url="http://h:1", **fields)).options)

    assert "stream" not in options(backend="openai")
    assert options(backend="openai", backend_stream="always")["stream"] is True
    assert options(backend="sglang", backend_stream="never")["stream"] is False


def _events(body: bytes) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        return [event async for event in sse_events(httpx.Response(200, content=body))]

    return asyncio.run(read())


def test_error_events_in_a_stream() -> None:
    ok = b'data: {"a": 1}\n\n: comment\n\ndata: [DONE]\n\ndata: {"after": 1}\n\n'
    assert _events(ok) == [{"a": 1}]
    bad = {"error": {"message": "too long", "code": 400}}
    with pytest.raises(BackendBadRequest, match="too long"):
        _events(b"data: " + json.dumps(bad).encode() + b"\n\n")
    crashed = {"error": {"message": "CUDA out of memory"}}
    with pytest.raises(IncompleteGeneration, match="middle of a generation: CUDA out of memory"):
        _events(b'data: {"choices": []}\n\ndata: ' + json.dumps(crashed).encode() + b"\n\n")


def test_probe_health_busy_is_not_dead() -> None:
    """A probe queued behind generations: healthy while calls are in flight, not otherwise."""
    with OpenAIStandin() as standin:
        standin.model.acquire()  # a generation holds the model: /v1/models waits

        async def probes() -> list[bool]:
            async with httpx.AsyncClient(base_url=standin.url) as client:
                busy = await probe_health(client, "/v1/models", busy=lambda: True, timeout=0.2)
                idle = await probe_health(client, "/v1/models", busy=lambda: False, timeout=0.2)
                standin.model.release()
                free = await probe_health(client, "/v1/models", busy=lambda: False, timeout=5)
                missing = await probe_health(client, "/nowhere", busy=lambda: True, timeout=5)
            async with httpx.AsyncClient(base_url="http://127.0.0.1:9") as refused:
                dead = await probe_health(refused, "/v1/models", busy=lambda: True, timeout=1)
            return [busy, idle, free, missing, dead]

        assert asyncio.run(probes()) == [True, False, True, False, False]


def test_probe_health_starting_server_is_not_ready(model_dir: Any) -> None:
    with ContractServer(str(model_dir), starting_requests=1) as contract:

        async def probes() -> list[bool]:
            async with httpx.AsyncClient(base_url=contract.url) as client:
                return [await probe_health(client, "/health", busy=lambda: True) for _ in range(2)]

        assert asyncio.run(probes()) == [False, True]  # a 503 is not "busy"


def test_sglang_check_warns_without_metrics(model_dir: Any) -> None:
    async def warnings(enable_metrics: bool) -> list[str]:
        with ContractServer(str(model_dir), enable_metrics=enable_metrics) as contract:
            backend = SGLangBackend(contract.url)
            await backend.start()
            try:
                return await backend.check()
            finally:
                await backend.close()

    assert asyncio.run(warnings(True)) == []
    assert [w for w in asyncio.run(warnings(False)) if "--enable-metrics" in w]


class _HangingHealth:
    """A backend whose health probe never answers and whose calls wait for a signal."""

    name = "hanging"

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def health(self) -> bool:
        await asyncio.sleep(60)
        return True

    async def check(self) -> list[str]:
        return []

    async def info(self) -> ModelInfo:
        return ModelInfo(name="m", context_length=1, backend=self.name)

    async def metrics(self) -> dict[str, float]:
        return {}

    async def chat(self, request: ChatRequest, slice_tokens: int | None = None) -> ChatResult:
        await self.release.wait()
        return ChatResult(text="ok", finish_reason="stop")


def test_engine_slow_probe_is_busy_with_calls_in_flight_and_changes_are_counted() -> None:
    from datetime import timedelta

    from aiosd.sdk.cluster import Lease
    from aiosd.sdk.protocol import utcnow

    async def scenario() -> list[tuple[bool, float, float]]:
        backend = _HangingHealth()
        engine = Engine(WorkerConfig(worker_id="w", host="h", backend="hanging", capacity=2), backend)
        lease = Lease(
            lease_id="l",
            key="a/1",
            agent="a",
            call_id="c",
            expires_at=utcnow() + timedelta(minutes=1),
            args={"messages": [{"role": "user", "content": "hi"}]},
        )
        seen = []
        for _ in range(2):
            probe = await engine.probe(0.1)  # nothing in flight: a silent backend is dead
            seen.append((probe.healthy, probe.metrics["busy"], probe.metrics["health_changes"]))
        call = asyncio.create_task(engine.run(lease))
        await asyncio.sleep(0.05)
        probe = await engine.probe(0.1)  # busy with our call: alive
        seen.append((probe.healthy, probe.metrics["busy"], probe.metrics["health_changes"]))
        backend.release.set()
        assert (await call).status == "done"
        probe = await engine.probe(0.1)
        seen.append((probe.healthy, probe.metrics["busy"], probe.metrics["health_changes"]))
        return seen

    assert asyncio.run(scenario()) == [(False, 0.0, 0.0), (False, 0.0, 0.0), (True, 1.0, 1.0), (False, 0.0, 2.0)]
