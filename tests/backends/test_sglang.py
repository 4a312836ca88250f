"""The ``sglang`` backend against the SGLang contract server."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import httpx
import pytest
from sglang_contract import ContractServer

from aiosd.workers.backends.base import (
    BackendBadRequest,
    BackendUnavailable,
    ChatRequest,
    ChatResult,
    Message,
    OutputInvalid,
)
from aiosd.workers.backends.sglang import SGLangBackend


def _request(text: str = "hello there", **options: object) -> ChatRequest:
    return ChatRequest(messages=(Message(role="user", content=text),), temperature=0.0, **options)  # type: ignore[arg-type]


async def _sliced(backend: SGLangBackend, request: ChatRequest, size: int) -> list[ChatResult]:
    results = [await backend.chat(request, slice_tokens=size)]
    while results[-1].finish_reason == "slice":
        resumed = request.model_copy(update={"resume": results[-1].resume()})
        results.append(await backend.chat(resumed, slice_tokens=size))
    return results


def test_health_is_503_while_starting_then_200(contract: ContractServer) -> None:
    async def scenario() -> list[bool]:
        backend = SGLangBackend(contract.url)
        await backend.start()
        try:
            return [await backend.health() for _ in range(4)]
        finally:
            await backend.close()

    assert asyncio.run(scenario()) == [False, False, True, True]


def test_info_and_metrics(contract: ContractServer, model_dir: Path) -> None:
    async def scenario() -> None:
        backend = SGLangBackend(contract.url)
        await backend.start()
        info = await backend.info()
        metrics = await backend.metrics()
        await backend.close()
        assert (info.name, info.context_length, info.backend) == (str(model_dir), 2048, "sglang")
        assert metrics["num_running_reqs"] == 0.0
        assert metrics["num_queue_reqs"] == 0.0
        assert metrics["token_usage"] == 0.25
        assert metrics["cache_hit_rate"] == 0.5
        assert metrics["in_flight"] == 0.0
        assert not any("bucket" in key for key in metrics)

    asyncio.run(scenario())


@pytest.mark.parametrize("stream", [True, False])
def test_chat_answers_with_usage(contract: ContractServer, stream: bool) -> None:
    async def scenario() -> ChatResult:
        backend = SGLangBackend(contract.url, stream=stream)
        await backend.start()
        try:
            return await backend.chat(_request("hi"))
        finally:
            await backend.close()

    result = asyncio.run(scenario())
    assert result.text == "Echo: hi"
    assert result.finish_reason == "stop"
    prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert result.usage.prompt_tokens == len(prompt)
    assert result.usage.completion_tokens == len("Echo: hi") + 1  # + EOS
    # The chat template came from the model folder /model_info names; ids went as input_ids.
    sent = contract.state.requests[-1]
    assert sent["input_ids"] == [ord(c) for c in prompt]
    assert sent["stream"] is stream and sent["rid"]


def test_stream_text_is_cumulative(contract: ContractServer) -> None:
    body = {
        "text": "<|im_start|>user\nabc<|im_end|>\n<|im_start|>assistant\n",
        "sampling_params": {"max_new_tokens": 50},
        "stream": True,
    }
    texts = []
    with httpx.stream("POST", f"{contract.url}/generate", json=body) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        texts.append(json.loads(line[5:])["text"])
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
    assert texts[-1] == "Echo: abc"


@pytest.mark.parametrize("incremental_ids", [False, True])
def test_greedy_slices_equal_unsliced(model_dir: Path, incremental_ids: bool) -> None:
    async def scenario(server: ContractServer) -> tuple[ChatResult, list[ChatResult]]:
        backend = SGLangBackend(server.url)
        await backend.start()
        try:
            request = _request("time slicing must be lossless")
            return await backend.chat(request), await _sliced(backend, request, 3)
        finally:
            await backend.close()

    with ContractServer(str(model_dir), incremental_ids=incremental_ids) as server:
        whole, slices = asyncio.run(scenario(server))
        requests = server.state.requests
    assert len(slices) > 3
    assert [r.finish_reason for r in slices] == ["slice"] * (len(slices) - 1) + ["stop"]
    assert slices[-1].text == whole.text == "Echo: time slicing must be lossless"
    assert slices[-1].token_ids == whole.token_ids
    # Each resume sent prompt ids + every generated id, and hit the prefix cache.
    assert requests[2]["input_ids"] == requests[1]["input_ids"] + list(slices[0].token_ids or ())
    assert all(r.usage.cached_tokens >= r.usage.prompt_tokens - 1 for r in slices[1:])
    assert sum(r.usage.completion_tokens for r in slices) == whole.usage.completion_tokens


def test_max_tokens_and_stop(contract: ContractServer) -> None:
    async def scenario() -> tuple[ChatResult, ChatResult, ChatResult]:
        backend = SGLangBackend(contract.url, stream=False)
        await backend.start()
        try:
            cut = await backend.chat(_request("abcdef", max_tokens=4))
            last_slice = await backend.chat(_request("abcdef", max_tokens=4), slice_tokens=4)
            stopped = await backend.chat(_request("abcdef", stop=("cd",)))
            return cut, last_slice, stopped
        finally:
            await backend.close()

    cut, last_slice, stopped = asyncio.run(scenario())
    assert (cut.text, cut.finish_reason) == ("Echo", "length")
    assert last_slice.finish_reason == "length"  # max_tokens, not the slice, ended it
    assert (stopped.text, stopped.finish_reason) == ("Echo: ab", "stop")


def test_stop_string_across_a_slice_boundary(contract: ContractServer) -> None:
    async def scenario() -> list[ChatResult]:
        backend = SGLangBackend(contract.url)
        await backend.start()
        try:
            return await _sliced(backend, _request("abcdef", stop=("o: a",)), 4)
        finally:
            await backend.close()

    results = asyncio.run(scenario())
    assert (results[-1].text, results[-1].finish_reason) == ("Ech", "stop")


def test_json_mode(contract: ContractServer) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    wrong = {"type": "object", "required": ["name"]}

    async def scenario() -> ChatResult:
        backend = SGLangBackend(contract.url)
        await backend.start()
        try:
            with pytest.raises(OutputInvalid, match=r"JSON Schema.*'name' is a required property"):
                await backend.chat(_request(response_format=wrong))
            with pytest.raises(BackendBadRequest, match="not a valid JSON Schema"):
                await backend.chat(_request(response_format={"type": "no-such-type"}))
            return await backend.chat(_request(response_format=schema), slice_tokens=2)
        finally:
            await backend.close()

    result = asyncio.run(scenario())
    assert json.loads(result.text) == {"answer": 42}
    assert result.finish_reason == "stop"  # JSON calls are not sliced on sglang
    assert json.loads(contract.state.requests[-1]["sampling_params"]["json_schema"]) == schema


def test_tool_calls_are_parsed(contract: ContractServer) -> None:
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    call = '<tool_call>{"name": "get_time", "arguments": {"tz": "UTC"}}</tool_call>'

    async def scenario() -> ChatResult:
        backend = SGLangBackend(contract.url)
        await backend.start()
        try:
            return await backend.chat(_request(call, tools=(tool,), max_tokens=200))
        finally:
            await backend.close()

    result = asyncio.run(scenario())
    assert result.finish_reason == "tool_calls"
    assert result.text == "Echo:"
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in result.tool_calls]
    assert calls == [("get_time", {"tz": "UTC"})]
    # ChatML has no tool support, so the tools were described in a system message.
    assert "<tools>" in "".join(chr(i) for i in contract.state.requests[-1]["input_ids"])


def test_cancel_aborts_the_request_on_the_server(model_dir: Path) -> None:
    async def scenario(server: ContractServer) -> None:
        backend = SGLangBackend(server.url)
        await backend.start()
        task = asyncio.create_task(backend.chat(_request("a long question " * 4, max_tokens=200)))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await backend.close()

    with ContractServer(str(model_dir), token_delay=0.02) as server:
        asyncio.run(scenario(server))
        assert server.state.seen_rids and server.state.seen_rids[-1] in server.state.aborted


def test_unreachable_server_is_unavailable(model_dir: Path) -> None:
    async def scenario() -> None:
        backend = SGLangBackend("http://127.0.0.1:9", chat_template=str(model_dir))
        await backend.start()
        assert await backend.health() is False
        assert (await backend.metrics()) == {"in_flight": 0.0}
        with pytest.raises(BackendUnavailable):
            await backend.chat(_request())
        await backend.close()

    asyncio.run(scenario())
