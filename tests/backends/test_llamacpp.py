"""The embedded ``llamacpp`` backend with the real SmolLM2-135M model (no mocks)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

from aiosd.workers.backends.base import ChatRequest, ChatResult, Message, OutputInvalid
from aiosd.workers.backends.llamacpp import LlamaCppBackend, bundled_gguf

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.fixture(scope="module")
def backend() -> Iterator[LlamaCppBackend]:
    """One loaded model for the whole module (the backend is event-loop agnostic)."""
    llama = LlamaCppBackend()
    asyncio.run(llama.start())
    yield llama
    asyncio.run(llama.close())


def _ask(text: str, **options: object) -> ChatRequest:
    settings: dict[str, object] = {"temperature": 0.0, "max_tokens": 40, **options}
    return ChatRequest(messages=(Message(role="user", content=text),), **settings)  # type: ignore[arg-type]


async def _sliced(
    backend: LlamaCppBackend, request: ChatRequest, size: int, between: ChatRequest | None = None
) -> list[ChatResult]:
    """Run ``request`` slice by slice; ``between`` runs after each slice to evict the cache."""
    results = [await backend.chat(request, slice_tokens=size)]
    while results[-1].finish_reason == "slice":
        if between is not None:
            await backend.chat(between)
        resumed = request.model_copy(update={"resume": results[-1].resume()})
        results.append(await backend.chat(resumed, slice_tokens=size))
    return results


def test_real_answer_with_usage(backend: LlamaCppBackend) -> None:
    async def scenario() -> ChatResult:
        assert await backend.health()
        info = await backend.info()
        assert (info.name, info.context_length, info.backend) == (bundled_gguf().stem, 2048, "llamacpp")
        return await backend.chat(_ask("What is the capital of France?", max_tokens=24))

    result = asyncio.run(scenario())
    assert result.text.strip()
    assert result.finish_reason in ("stop", "length")
    assert result.usage.prompt_tokens > 10
    assert 0 < result.usage.completion_tokens <= 24
    assert result.token_ids is not None and len(result.token_ids) == result.usage.completion_tokens
    assert result.run_time > 0


def test_greedy_slices_equal_unsliced_exactly(backend: LlamaCppBackend) -> None:
    request = _ask("Write a short poem about the sea.", max_tokens=30)
    other = _ask("Name three colours.", max_tokens=2)

    async def scenario() -> tuple[ChatResult, list[ChatResult], list[ChatResult]]:
        whole = await backend.chat(request)
        warm = await _sliced(backend, request, 3)
        cold = await _sliced(backend, request, 7, between=other)  # every resume finds a foreign cache
        return whole, warm, cold

    whole, warm, cold = asyncio.run(scenario())
    assert whole.finish_reason == "length" and len(whole.token_ids or ()) == 30
    for slices in (warm, cold):
        assert [r.finish_reason for r in slices[:-1]] == ["slice"] * (len(slices) - 1)
        assert slices[-1].finish_reason == "length"
        assert slices[-1].token_ids == whole.token_ids
        assert slices[-1].text == whole.text
        assert sum(r.usage.completion_tokens for r in slices) == 30
    # A warm resume evaluates one token; a cold one replays the prompt and the slices.
    assert all(r.usage.cached_tokens == r.usage.prompt_tokens - 1 for r in warm[1:])
    assert all(r.usage.cached_tokens == 0 for r in cold[1:])


def test_resuming_needs_token_ids_not_text(backend: LlamaCppBackend) -> None:
    """Why snapshots keep token ids: re-tokenizing the partial text is lossy.

    SmolLM2 spells Japanese with byte tokens, so many slice boundaries fall
    inside a character: the text of such a prefix cannot even be encoded back
    to its ids. Slicing from ids still reproduces the unsliced answer exactly.
    """
    request = _ask("Say hello in Japanese.", max_tokens=24)

    async def scenario() -> tuple[ChatResult, list[ChatResult]]:
        return await backend.chat(request), await _sliced(backend, request, 3)

    whole, slices = asyncio.run(scenario())
    ids = list(whole.token_ids or ())
    llama = backend._llama

    def retokenized(k: int) -> list[int]:
        text = bytes(llama.detokenize(ids[:k])).decode("utf-8", "ignore")
        return list(llama.tokenize(text.encode(), add_bos=False, special=True))

    lossy = [k for k in range(1, len(ids) + 1) if retokenized(k) != ids[:k]]
    assert lossy, "expected some prefixes whose text does not re-tokenize to the same ids"
    assert slices[-1].token_ids == whole.token_ids and slices[-1].text == whole.text


def test_json_mode_returns_valid_json(backend: LlamaCppBackend) -> None:
    ask = "Give me a JSON object describing a person with a name and an age."

    async def scenario() -> tuple[ChatResult, ChatResult, list[ChatResult]]:
        free = await backend.chat(_ask(ask, response_format="json", max_tokens=60))
        person = await backend.chat(_ask(ask, response_format=PERSON, max_tokens=60))
        sliced = await _sliced(backend, _ask(ask, response_format=PERSON, max_tokens=60), 4)
        return free, person, sliced

    free, person, sliced = asyncio.run(scenario())
    assert isinstance(json.loads(free.text), dict)
    document = json.loads(person.text)
    assert isinstance(document["name"], str) and isinstance(document["age"], int)
    # The grammar is replayed over resumed tokens, so constrained slices stay exact too.
    assert sliced[-1].text == person.text and len(sliced) > 2


def test_json_mode_cut_short_is_a_clear_error(backend: LlamaCppBackend) -> None:
    with pytest.raises(OutputInvalid, match="cut at max_tokens=5") as error:
        asyncio.run(backend.chat(_ask("Describe a person as JSON.", response_format=PERSON, max_tokens=5)))
    assert error.value.text.startswith("{")


def test_stop_strings(backend: LlamaCppBackend) -> None:
    request = _ask("Count from one to ten in words.", max_tokens=24)

    async def scenario() -> tuple[ChatResult, ChatResult, list[ChatResult], str]:
        whole = await backend.chat(request)
        stop = whole.text[len(whole.text) // 2 :][:4]  # a piece from the middle of the answer
        with_stop = request.model_copy(update={"stop": (stop,)})
        return whole, await backend.chat(with_stop), await _sliced(backend, with_stop, 4), stop

    whole, stopped, sliced, stop = asyncio.run(scenario())
    assert stopped.finish_reason == "stop"
    assert stopped.text == whole.text[: whole.text.find(stop)]
    assert (sliced[-1].text, sliced[-1].finish_reason) == (stopped.text, "stop")


def test_cancel_frees_the_context(backend: LlamaCppBackend) -> None:
    async def scenario() -> float:
        task = asyncio.create_task(backend.chat(_ask("Tell me a very long story.", max_tokens=1500)))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        started = time.monotonic()
        await backend.chat(_ask("Hi", max_tokens=2))
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 5.0  # not stuck behind 1500 tokens
