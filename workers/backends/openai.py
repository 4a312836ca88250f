"""The ``openai`` backend: any OpenAI-compatible server, via httpx.

``POST /v1/chat/completions`` for calls, ``GET /v1/models`` for health and
info. Works with vLLM, SGLang's OpenAI API, llama.cpp's servers, Ollama and
hosted APIs.

Streaming: ``stream=None`` (auto, the default) sends a call unstreamed unless it
is sliced; ``True``/``False`` force it (see :func:`~.http.streaming`). Either
way a call is complete only when the server gave a finish reason: a stream
that closes without one -- llama-cpp-python's ``llama_cpp.server`` does that
to a streamed call whenever another request arrives, unless it was started
with ``--interrupt_requests False`` -- raises :class:`~.base.IncompleteGeneration`.

Health: ``/v1/models`` may queue behind generations (``llama_cpp.server``
serves it under its model lock), so a slow probe while calls are in flight
means busy, not dead (:func:`~.http.probe_health`). :meth:`OpenAIBackend.check`
recognises ``llama_cpp.server`` (its ``/openapi.json`` title) and warns about
the settings that would cut answers short.

Time slicing over this API is at best approximate, and off by default. The
API speaks text, not token ids, so a resumed slice re-sends the partial
output as text and the server re-tokenizes it; the resumed token sequence
can differ at the seam and greedy output can then diverge. ``continuation``
says how the server continues a partial answer:

- ``"none"`` (default): it cannot; ``slice_tokens`` is ignored and every call
  runs to completion (this is the case for llama-cpp-python's
  ``llama_cpp.server``, whose chat handler always opens a new assistant turn);
- ``"continue_final_message"``: vLLM and SGLang -- the partial answer is sent
  as a final assistant message with ``continue_final_message: true,
  add_generation_prompt: false``;
- ``"assistant_prefix"``: servers that treat a trailing assistant message as
  a prefix to continue (llama.cpp's ``llama-server``, Ollama).

JSON Schema output: OpenAI's ``{"type": "json_schema", "json_schema": {...}}``
by default; ``schema_format="json_object"`` sends the older
``{"type": "json_object", "schema": {...}}`` that llama-cpp-python's server
understands. Either way the answer is validated here.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import httpx

from . import jsonmode
from .base import (
    BackendError,
    BackendUnavailable,
    ChatRequest,
    ChatResult,
    FunctionCall,
    ModelInfo,
    ToolCall,
    Usage,
    completion_budget,
    finish_reason,
)
from .http import answer_lost, probe_health, raise_for_status, sse_events, stream_breaks, streaming, wrap_errors

Continuation = Literal["none", "continue_final_message", "assistant_prefix"]
SchemaFormat = Literal["json_schema", "json_object"]
#: The title of llama-cpp-python's server in its ``/openapi.json``.
LLAMA_CPP_PYTHON_TITLE = "llama.cpp Python API"


class OpenAIBackend:
    """Drives an OpenAI-compatible server at ``url`` (with or without ``/v1``)."""

    name = "openai"

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        stream: bool | None = None,
        continuation: Continuation = "none",
        schema_format: SchemaFormat = "json_schema",
        context_length: int = 0,
        timeout: float = 600.0,
    ) -> None:
        base = url.rstrip("/")
        self.url = base if base.endswith("/v1") else f"{base}/v1"
        self.model = model
        self.stream = stream
        self.continuation = continuation
        self.schema_format = schema_format
        self._context_length = context_length
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(timeout, connect=10.0)
        self._client: httpx.AsyncClient | None = None
        self._in_flight = 0
        self._calls = 0  # calls ever started: did any run while a probe waited?

    async def start(self) -> None:
        """Open the HTTP client; pick the served model when none was configured."""
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=self._timeout)
        if self.model is None:
            self.model = str((await self._first_model())["id"])

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def health(self) -> bool:
        """True when ``/v1/models`` answers, or is merely slow while calls are in flight."""
        try:
            client = self._http()
        except BackendError:
            return False
        calls = self._calls
        return await probe_health(
            client, "/models", busy=lambda: self._in_flight > 0 or self._calls != calls, ready=(200,)
        )

    async def check(self) -> list[str]:
        """Warnings for server settings known to break calls; only llama_cpp.server is recognised."""
        if not await self._is_llama_cpp_python():
            return []
        warnings = []
        if self.stream:
            warnings.append(
                "llama_cpp.server cuts a streamed generation short whenever another request arrives, unless it "
                "runs with --interrupt_requests False; this worker streams every call (backend_stream=always), so "
                "such calls fail and are retried: start the server with --interrupt_requests False or use "
                "backend_stream=auto"
            )
        if self.continuation != "none":
            warnings.append("llama_cpp.server cannot continue a partial answer: time slices would restart it")
        return warnings

    async def info(self) -> ModelInfo:
        """The model id; context length from ``max_model_len`` (vLLM, SGLang) or configuration."""
        card = await self._first_model()
        context = int(card.get("max_model_len") or card.get("context_length") or self._context_length)
        return ModelInfo(name=str(self.model or card["id"]), context_length=context, backend=self.name)

    async def metrics(self) -> dict[str, float]:
        """This API has no standard load figures: only our own in-flight count."""
        return {"in_flight": float(self._in_flight)}

    async def chat(self, request: ChatRequest, slice_tokens: int | None = None) -> ChatResult:
        """One call, or one approximate slice when ``continuation`` allows it."""
        jsonmode.check_schema(request)
        if self.continuation == "none" or request.wants_json or request.tools:
            slice_tokens = None  # see the module doc
        budget, sliced = completion_budget(request, slice_tokens)
        stream = streaming(self.stream, sliced)
        body = self._body(request, budget, stream)
        started = time.monotonic()
        self._in_flight += 1
        self._calls += 1
        try:
            with wrap_errors("openai /chat/completions"):
                message, reason, usage = await (self._streamed(body) if stream else self._single(body))
        finally:
            self._in_flight -= 1
        result = _result(request, message, reason, usage, sliced, time.monotonic() - started)
        jsonmode.validate_output(request, result)
        return result

    # -- helpers -------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise BackendUnavailable("openai backend is not started")
        return self._client

    async def _first_model(self) -> dict[str, Any]:
        with wrap_errors("openai /models"):
            response = await self._http().get("/models")
            await raise_for_status(response, "openai /models")
            cards = response.json()["data"]
            wanted = [c for c in cards if c.get("id") == self.model] if self.model else cards
            card: dict[str, Any] = (wanted or cards)[0]
            return card

    async def _is_llama_cpp_python(self) -> bool:
        # /openapi.json is served without the model lock, so this never waits behind generations.
        root = self.url.removesuffix("/v1")
        try:
            response = await self._http().get(f"{root}/openapi.json", timeout=5.0)
            title = str(response.json().get("info", {}).get("title", "")) if response.is_success else ""
        except (httpx.HTTPError, ValueError, AttributeError):
            return False
        return LLAMA_CPP_PYTHON_TITLE in title

    def _body(self, request: ChatRequest, budget: int, stream: bool) -> dict[str, Any]:
        messages = [m.as_dict() for m in request.messages]
        body: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": messages,
            "max_tokens": budget,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": stream,
        }
        if request.resume is not None and request.resume.text:
            messages.append({"role": "assistant", "content": request.resume.text})
            if self.continuation == "continue_final_message":
                body.update(continue_final_message=True, add_generation_prompt=False)
        if stream:
            body["stream_options"] = {"include_usage": True}
        optional = {"stop": list(request.stop) or None, "seed": request.seed, "tools": list(request.tools) or None}
        body.update({k: v for k, v in optional.items() if v is not None})
        schema = request.json_schema
        if schema is not None and self.schema_format == "json_object":
            body["response_format"] = {"type": "json_object", "schema": schema}
        elif schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
        elif request.wants_json:
            body["response_format"] = {"type": "json_object"}
        return body

    async def _single(self, body: dict[str, Any]) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
        with answer_lost("openai /chat/completions"):
            response = await self._http().post("/chat/completions", json=body)
        await raise_for_status(response, "openai /chat/completions")
        data = response.json()
        choice = data["choices"][0]
        return choice["message"], choice.get("finish_reason"), data.get("usage") or {}

    async def _streamed(self, body: dict[str, Any]) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
        content: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        reason: str | None = None
        usage: dict[str, Any] = {}
        chunks = 0
        async with self._http().stream("POST", "/chat/completions", json=body) as response:
            await raise_for_status(response, "openai /chat/completions")
            with stream_breaks("openai /chat/completions", lambda: chunks):
                async for event in sse_events(response):
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or ():
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            content.append(delta["content"])
                            chunks += 1
                        _merge_tool_call_deltas(calls, delta.get("tool_calls") or ())
                        reason = choice.get("finish_reason") or reason
        if not usage:
            # Servers that ignore stream_options: one content chunk is one token.
            usage = {"completion_tokens": chunks}
        message = {"content": "".join(content), "tool_calls": [calls[i] for i in sorted(calls)]}
        return message, reason, usage


def _merge_tool_call_deltas(calls: dict[int, dict[str, Any]], deltas: Any) -> None:
    # Streamed tool calls arrive in pieces keyed by index; arguments are concatenated.
    for delta in deltas:
        index = int(delta.get("index", len(calls)))
        call = calls.setdefault(index, {"id": "", "function": {"name": "", "arguments": ""}})
        call["id"] = delta.get("id") or call["id"]
        function = delta.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""


def _result(
    request: ChatRequest,
    message: dict[str, Any],
    reason: str | None,
    usage: dict[str, Any],
    sliced: bool,
    run_time: float,
) -> ChatResult:
    calls = tuple(
        ToolCall(id=c.get("id") or f"call_{i}", function=FunctionCall(**_function(c)))
        for i, c in enumerate(message.get("tool_calls") or ())
    )
    produced = int(usage.get("completion_tokens") or 0)
    finish = finish_reason(reason, sliced=sliced, what="openai /chat/completions", produced=produced)
    if calls:
        finish = "tool_calls"  # some servers say "stop" after a tool call
    prior = request.resume.text if request.resume else ""
    details = usage.get("prompt_tokens_details") or {}
    return ChatResult(
        text=prior + str(message.get("content") or ""),
        finish_reason=finish,
        tool_calls=calls,
        usage=Usage(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
        ),
        token_ids=None,
        run_time=run_time,
        model=request.model or "",
    )


def _function(call: dict[str, Any]) -> dict[str, str]:
    function = call.get("function") or {}
    return {"name": str(function.get("name", "")), "arguments": str(function.get("arguments") or "{}")}
