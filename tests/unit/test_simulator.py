"""The bench's GPU serving simulator (``bench/sim``): its two headline effects, its cache, its HTTP shapes.

Simulated times (``meta_info.sim``) come from the engine's clock, so the
assertions on them do not depend on how busy this machine is; a small
``time_scale`` keeps every test well under a second of wall time. The
worker's real ``sglang`` and ``openai`` backends drive the simulator over HTTP
(uvicorn on 127.0.0.1, inside the test's event loop).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import httpx
import pytest

from aiosd.workers.backends.base import ChatRequest, ChatResult, IncompleteGeneration, Message
from aiosd.workers.backends.openai import OpenAIBackend
from aiosd.workers.backends.sglang import SGLangBackend
from bench.sim import EngineConfig, Simulator, serve
from bench.sim import model as sim_model
from bench.sim import tokenizer as sim_tokenizer
from bench.sim.cache import KVPool, block_hashes


def _client(sim: Simulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app), base_url="http://sim")


async def _generate(client: httpx.AsyncClient, text: str, max_new_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    body = {"text": text, "sampling_params": {"max_new_tokens": max_new_tokens}, **extra}
    response = await client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    meta: dict[str, Any] = response.json()["meta_info"]
    return meta


def _prompt(seed: str, tokens: int) -> str:
    # 4 bytes per token; distinct seeds differ from the first token on.
    return (seed + " " + "lorem ipsum dolor sit amet " * tokens)[: tokens * 4]


# -- the headline effects --------------------------------------------------------------------


def test_a_prefix_hit_cuts_time_to_first_token_and_another_prompt_does_not_hit() -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        sim = Simulator(EngineConfig(time_scale=0.02))
        async with _client(sim) as client:
            first = await _generate(client, _prompt("alpha", 4000))
            again = await _generate(client, _prompt("alpha", 4000))
            other = await _generate(client, _prompt("omega", 4000))
        await sim.engine.stop()
        return first, again, other

    first, again, other = asyncio.run(scenario())
    assert first["prompt_tokens"] == again["prompt_tokens"] == 4000
    assert first["cached_tokens"] == 0
    assert again["cached_tokens"] >= 4000 - 16  # all but the last block, which is recomputed
    assert other["cached_tokens"] == 0
    # 4000 uncached tokens take ~170 ms on the simulated H100; a cached prompt one forward pass.
    assert again["sim"]["ttft"] < first["sim"]["ttft"] / 10
    assert other["sim"]["ttft"] > again["sim"]["ttft"] * 10
    assert first["sim"]["ttft"] == pytest.approx(other["sim"]["ttft"], rel=0.2)


def test_b_batching_raises_throughput() -> None:
    n, out = 16, 128

    async def makespan(client: httpx.AsyncClient, count: int, tag: str) -> float:
        metas = await asyncio.gather(*(_generate(client, _prompt(f"{tag}{i}", 200), out) for i in range(count)))
        assert all(m["completion_tokens"] == out for m in metas)
        start = min(float(m["sim"]["arrival"]) for m in metas)
        return max(float(m["sim"]["arrival"] + m["sim"]["e2e"]) for m in metas) - start

    async def scenario() -> tuple[float, float]:
        sim = Simulator(EngineConfig(time_scale=0.25))
        async with _client(sim) as client:
            one = await makespan(client, 1, "solo")
            many = await makespan(client, n, "batch")
        await sim.engine.stop()
        return one, many

    one, many = asyncio.run(scenario())
    assert one == pytest.approx(out * 0.0061, rel=0.1)  # ~6.1 ms per decode step at batch 1
    assert many < n * one / 4  # 16 requests together take far less than 16 alone
    assert (n * out / many) > 5 * (out / one)  # output tokens per second


def test_c_lru_eviction_when_the_cache_is_full() -> None:
    # Pool of 16 blocks of 16 tokens; each call holds 96 prompt + 8 output tokens (6 full blocks when done).
    async def scenario() -> dict[str, Any]:
        sim = Simulator(EngineConfig(time_scale=0.01, cache_tokens=256, block_tokens=16))
        a, b, c = (_prompt(seed, 96) for seed in ("aaaa", "bbbb", "cccc"))
        results: dict[str, Any] = {}
        async with _client(sim) as client:
            await _generate(client, a)
            await _generate(client, b)
            results["a again"] = await _generate(client, a)  # A becomes the most recently used
            await _generate(client, c)  # needs room: evicts from B, the least recently used
            results["a last"] = await _generate(client, a)
            results["b last"] = await _generate(client, b)
            results["stats"] = (await client.get("/sim/stats")).json()
        await sim.engine.stop()
        return results

    results = asyncio.run(scenario())
    assert results["a again"]["cached_tokens"] == 80  # 5 of 6 blocks: the last is recomputed
    assert results["a last"]["cached_tokens"] == 80  # A survived C
    assert 0 < results["b last"]["cached_tokens"] < 80  # B lost its deepest blocks, kept its prefix
    stats = results["stats"]
    assert stats["evicted_blocks"] > 0
    assert stats["cache_used_tokens"] <= stats["cache_capacity_tokens"] == 256
    assert stats["reserved_tokens"] == 0


def test_lru_order_evicts_leaves_before_prefixes_and_spares_pinned_blocks() -> None:
    pool = KVPool(capacity=6 * 16, block_tokens=16)
    cache = pool.cache
    shared = list(range(32))
    one, two = block_hashes([*shared, *range(100, 116)], 16), block_hashes([*shared, *range(200, 216)], 16)
    for chain in (one, two):
        cache.insert(chain)
        cache.pin(chain)
    cache.unpin(one)  # chain two stays in use
    assert cache.match(one) == 3 and cache.used == 4 * 16
    assert pool.make_room(3 * 16)  # 2 blocks free: evicts one's leaf only
    assert cache.match(one) == 2 and cache.match(two) == 3
    assert not pool.make_room(6 * 16)  # the rest is pinned by chain two
    cache.unpin(two)
    assert pool.make_room(6 * 16)
    assert cache.used == 0 and cache.evicted_blocks == 4


# -- the worker's backends against the simulator --------------------------------------------


def _chat(text: str, max_tokens: int = 64) -> ChatRequest:
    system = Message(role="system", content="You are an agent that plans trips. " * 20)
    user = Message(role="user", content=text)
    return ChatRequest(messages=(system, user), max_tokens=max_tokens, temperature=0.0)


async def _drive(backend: SGLangBackend | OpenAIBackend, requests: list[ChatRequest]) -> list[ChatResult]:
    await backend.start()
    try:
        assert await backend.health()
        return [await backend.chat(r) for r in requests]
    finally:
        await backend.close()


@pytest.mark.parametrize("stream", [False, True])
def test_d_sglang_and_openai_backends_read_the_simulator(stream: bool) -> None:
    async def scenario() -> dict[str, Any]:
        sim = Simulator(EngineConfig(time_scale=0.01))
        async with serve([sim]) as (url,):
            sglang = await _drive(SGLangBackend(url, stream=stream), [_chat("Lisbon [[sim:out=12]]")] * 2)
            openai = await _drive(
                OpenAIBackend(url, stream=stream), [_chat("Lisbon [[sim:out=12]]"), _chat("Porto", 9)]
            )
            info = SGLangBackend(url)
            await info.start()
            model, metrics = await info.info(), await info.metrics()
            await info.close()
        return {"sglang": sglang, "openai": openai, "model": model, "metrics": metrics}

    found = asyncio.run(scenario())
    first, second = found["sglang"]
    assert first.finish_reason == second.finish_reason == "stop"
    assert (
        first.text == second.text == sim_model.output_text(0, 12) == "This is a simulated answer. This is a simulated "
    )
    assert first.usage.completion_tokens == 12 and first.token_ids is not None and len(first.token_ids) == 12
    assert first.usage.cached_tokens == 0 < first.usage.prompt_tokens
    assert second.usage.cached_tokens >= second.usage.prompt_tokens - 16
    same, capped = found["openai"]
    # The OpenAI path renders the same template: same prompt tokens, and the sglang calls' blocks hit.
    assert same.usage.prompt_tokens == first.usage.prompt_tokens
    assert same.usage.cached_tokens == second.usage.cached_tokens
    assert (same.text, same.finish_reason, same.usage.completion_tokens) == (first.text, "stop", 12)
    assert (capped.finish_reason, capped.usage.completion_tokens) == ("length", 9)
    assert capped.usage.cached_tokens > 0  # the shared system prompt
    assert found["model"].context_length == 131072 and found["model"].backend == "sglang"
    assert found["metrics"]["num_requests_total"] == 4.0
    assert 0 < found["metrics"]["cache_hit_rate"] < 1


def test_sglang_slices_continue_exactly() -> None:
    async def scenario() -> tuple[ChatResult, list[ChatResult]]:
        sim = Simulator(EngineConfig(time_scale=0.01))
        async with serve([sim]) as (url,):
            backend = SGLangBackend(url)
            await backend.start()
            request = _chat("Faro [[sim:out=20]]")
            whole = await backend.chat(request)
            slices = [await backend.chat(request, slice_tokens=7)]
            while slices[-1].finish_reason == "slice":
                resumed = request.model_copy(update={"resume": slices[-1].resume()})
                slices.append(await backend.chat(resumed, slice_tokens=7))
            await backend.close()
        return whole, slices

    whole, slices = asyncio.run(scenario())
    assert [s.finish_reason for s in slices] == ["slice", "slice", "stop"]
    assert slices[-1].text == whole.text and slices[-1].token_ids == whole.token_ids
    assert sum(s.usage.completion_tokens for s in slices) == whole.usage.completion_tokens == 20
    assert all(s.usage.cached_tokens >= s.usage.prompt_tokens - 16 for s in slices[1:])


def test_stream_shape_and_abort() -> None:
    async def scenario() -> tuple[list[dict[str, Any]], list[str], dict[str, Any], IncompleteGeneration | None]:
        sim = Simulator(EngineConfig(time_scale=0.01))
        async with serve([sim]) as (url,), httpx.AsyncClient(base_url=url) as client:
            body = {"text": _prompt("stream", 50), "sampling_params": {"max_new_tokens": 30}, "stream": True}
            async with client.stream("POST", "/generate", json=body) as response:
                lines = [line async for line in response.aiter_lines() if line.startswith("data:")]
            events = [json.loads(line[5:]) for line in lines[:-1]]
            # A long generation aborted through /abort_request ends with finish_reason "abort".
            long_body = {"text": "abort me", "sampling_params": {"max_new_tokens": 100_000}, "rid": "r1"}
            pending = asyncio.create_task(client.post("/generate", json=long_body))
            await asyncio.sleep(0.05)
            await client.post("/abort_request", json={"rid": "r1"})
            aborted = (await pending).json()["meta_info"]
            stats = (await client.get("/sim/stats")).json()
            # The sglang backend reports an aborted generation as incomplete, never as a result.
            error = None
            backend = SGLangBackend(url)
            await backend.start()
            task = asyncio.create_task(backend.chat(_chat("never ends", max_tokens=100_000)))
            while sim.engine.stats()["running"] == 0:
                await asyncio.sleep(0.01)
            for req in list(sim.engine.running):
                sim.engine.abort(req.rid)
            try:
                await task
            except IncompleteGeneration as exc:
                error = exc
            await backend.close()
        return events, lines, {"aborted": aborted, "stats": stats}, error

    events, lines, found, error = asyncio.run(scenario())
    assert lines[-1] == "data: [DONE]"
    texts = [e["text"] for e in events]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
    assert [e["meta_info"]["finish_reason"] for e in events][-1] == {"type": "length", "length": 30}
    assert all(e["meta_info"]["finish_reason"] is None for e in events[:-1])
    assert events[-1]["output_ids"] == sim_model.Plan(0, 30, {}).output_ids()
    assert found["aborted"]["finish_reason"]["type"] == "abort"
    assert 0 < found["aborted"]["completion_tokens"] < 100_000
    assert found["stats"]["requests_aborted"] == 1 and found["stats"]["reserved_tokens"] == 0
    assert error is not None


def test_tokenizer_round_trips_and_keeps_prefixes() -> None:
    text = "Grüße, agents: 4-byte chunks!"
    assert sim_tokenizer.decode(sim_tokenizer.encode(text)) == text
    head = sim_tokenizer.encode("x" * 64 + "tail one")
    assert head[:16] == sim_tokenizer.encode("x" * 64 + "another tail")[:16]
    with pytest.raises(ValueError):
        sim_tokenizer.decode([2**32])


def test_bad_requests_answer_400() -> None:
    async def scenario() -> list[int]:
        sim = Simulator(EngineConfig(time_scale=0.01, context_length=1000))
        async with _client(sim) as client:
            codes = [
                (await client.post("/generate", json=body)).status_code
                for body in (
                    {"text": ["a", "b"]},
                    {"text": "a", "input_ids": [1]},
                    {"input_ids": [-1]},
                    {"text": "x" * 8000},
                    {"text": "a", "sampling_params": {"max_new_tokens": 0}},
                )
            ]
            codes.append((await client.post("/v1/chat/completions", json={"messages": []})).status_code)
        await sim.engine.stop()
        return codes

    assert asyncio.run(scenario()) == [400] * 6
