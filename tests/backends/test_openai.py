"""The ``openai`` backend against llama-cpp-python's OpenAI-compatible server.

The server (``python -m llama_cpp.server``, from the ``llama-cpp-python[server]``
extra) runs the same SmolLM2 GGUF as the embedded backend, on 127.0.0.1 and a
free port, started and stopped by a module fixture.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from sglang_contract import free_port

from aiosd.workers.backends.base import BackendBadRequest, BackendUnavailable, ChatRequest, ChatResult, Message
from aiosd.workers.backends.llamacpp import bundled_gguf
from aiosd.workers.backends.openai import OpenAIBackend

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """llama_cpp.server with SmolLM2 on a free port; stopped (by its pid) afterwards."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(bundled_gguf()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        "1",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail(f"llama_cpp.server did not start (exit code {proc.poll()})")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ask(text: str, **options: object) -> ChatRequest:
    settings: dict[str, object] = {"temperature": 0.0, "max_tokens": 24, **options}
    return ChatRequest(messages=(Message(role="user", content=text),), **settings)  # type: ignore[arg-type]


async def _with_backend(url: str, stream: bool, request: ChatRequest, slice_tokens: int | None = None) -> ChatResult:
    backend = OpenAIBackend(url, stream=stream, schema_format="json_object", context_length=2048)
    await backend.start()
    try:
        return await backend.chat(request, slice_tokens=slice_tokens)
    finally:
        await backend.close()


def test_health_and_info(server_url: str) -> None:
    async def scenario() -> None:
        backend = OpenAIBackend(server_url, context_length=2048)
        await backend.start()
        assert await backend.health()
        info = await backend.info()
        assert info.name == backend.model and info.name.endswith(".gguf")
        assert (info.context_length, info.backend) == (2048, "openai")
        assert await backend.metrics() == {"in_flight": 0.0}
        await backend.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("stream", [False, True])
def test_real_answer_with_usage(server_url: str, stream: bool) -> None:
    result = asyncio.run(_with_backend(server_url, stream, _ask("What is the capital of France?")))
    assert result.text.strip()
    assert result.finish_reason in ("stop", "length")
    assert 0 < result.usage.completion_tokens <= 24
    if not stream:
        assert result.usage.prompt_tokens > 10


def test_stream_and_single_agree_on_greedy_text(server_url: str) -> None:
    request = _ask("Name a fruit.", max_tokens=12)
    single = asyncio.run(_with_backend(server_url, False, request))
    streamed = asyncio.run(_with_backend(server_url, True, request))
    assert streamed.text == single.text


def test_json_schema_output_is_valid(server_url: str) -> None:
    request = _ask(
        "Give me a JSON object describing a person with a name and an age.", response_format=PERSON, max_tokens=60
    )
    document = json.loads(asyncio.run(_with_backend(server_url, False, request)).text)
    assert isinstance(document["name"], str) and isinstance(document["age"], int)


def test_slicing_is_off_without_continuation_support(server_url: str) -> None:
    request = _ask("Name a colour.", max_tokens=10)
    whole = asyncio.run(_with_backend(server_url, False, request))
    sliced = asyncio.run(_with_backend(server_url, False, request, slice_tokens=2))
    assert sliced.finish_reason != "slice"  # llama_cpp.server cannot continue a partial answer
    assert sliced.text == whole.text


def test_errors_are_wrapped(server_url: str) -> None:
    with pytest.raises(BackendBadRequest, match="not a valid JSON Schema"):
        asyncio.run(_with_backend(server_url, False, _ask("x", response_format={"type": 12})))
    with pytest.raises(BackendBadRequest, match="HTTP 4"):
        asyncio.run(_with_backend(server_url, False, _ask("x " * 3000)))  # longer than the context
    with pytest.raises(BackendUnavailable):
        asyncio.run(_with_backend("http://127.0.0.1:9", False, _ask("x")))
