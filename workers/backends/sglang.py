"""The ``sglang`` backend: SGLang's native HTTP API (``/generate`` and friends).

Chat formatting -- the choice and why. SGLang's ``/v1/chat/completions``
applies the chat template for us, but it can only continue a sliced
generation from *text* (``continue_final_message``), which the server
re-tokenizes: the resumed token sequence may differ from the generated one and
greedy slicing stops being exact. So this backend renders the model's own
chat template here (Jinja2 from the model folder's ``tokenizer_config.json``,
see :class:`~.prompting.ChatTemplate`; no ``transformers`` needed), lets the
server tokenize the prompt once (``POST /tokenize``, cached here), and always
sends ``input_ids`` = prompt ids + generated ids to ``POST /generate``. A resumed
slice is then the very same token sequence, and SGLang's radix cache makes
its prefill nearly free (``meta_info.cached_tokens`` shows it).

Shapes follow SGLang's ``http_server.py``/``tokenizer_manager.py`` and its
native-API and sampling-parameter docs: streamed ``/generate`` sends
``data: {...}`` events whose ``text`` is cumulative (``output_ids`` cumulative
or, in some versions, incremental) and ends with ``data: [DONE]``;
``meta_info.finish_reason`` is ``None`` while running, then
``{"type": "stop"|"length"|"abort", ...}``.

Streaming: ``stream=None`` (auto, the default) streams only sliced calls (see
:func:`~.http.streaming`). A generation whose last output carries no finish
reason, or an ``abort``, is incomplete (:func:`~.base.finish_reason`), as is a
stream that breaks. Health is ``GET /health``, which SGLang answers as soon as
its scheduler produced output, so it does not queue behind generations; the
busy rule of :func:`~.http.probe_health` still covers a slow answer.

Limits: JSON-mode calls are not sliced (SGLang would restart the grammar at
the resume point), and non-greedy slices are valid samples but not the same
sample as an unsliced call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from . import jsonmode
from .base import (
    BackendError,
    BackendUnavailable,
    ChatRequest,
    ChatResult,
    ModelInfo,
    Usage,
    completion_budget,
    finish_reason,
)
from .http import (
    answer_lost,
    parse_prometheus,
    probe_health,
    raise_for_status,
    sse_events,
    stream_breaks,
    streaming,
    wrap_errors,
)
from .prompting import ChatTemplate, find_stop, parse_tool_calls

_TOKENIZE_CACHE_SIZE = 256


class SGLangBackend:
    """Drives one SGLang server at ``url`` (e.g. ``http://127.0.0.1:30000``).

    ``chat_template`` is a Jinja2 template or a path to a model folder; without
    it the template is read from the folder ``/model_info`` names, which
    works when the worker runs on the server's host.
    """

    name = "sglang"

    def __init__(
        self,
        url: str,
        *,
        chat_template: str | None = None,
        stream: bool | None = None,
        timeout: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.stream = stream
        self._template_source = chat_template
        self._template: ChatTemplate | None = None
        self._timeout = httpx.Timeout(timeout, connect=10.0)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._token_cache: dict[str, tuple[int, ...]] = {}
        self._in_flight = 0
        self._calls = 0  # calls ever started: did any run while a probe waited?

    async def start(self) -> None:
        """Open the HTTP client. The server may still be starting: see :meth:`health`."""
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.url, timeout=self._timeout, transport=self._transport)

    async def close(self) -> None:
        """Close the HTTP client (the server itself belongs to its launcher)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def health(self) -> bool:
        """``GET /health``: SGLang answers 503 while starting, 200 when ready; slow while busy is healthy."""
        try:
            client = self._http()
        except BackendError:
            return False
        calls = self._calls
        return await probe_health(
            client, "/health", busy=lambda: self._in_flight > 0 or self._calls != calls, ready=(200,)
        )

    async def check(self) -> list[str]:
        """Warnings from ``/get_server_info``'s server arguments (when the server offers them)."""
        try:
            response = await self._http().get("/get_server_info", timeout=5.0)
            info = response.json() if response.is_success else {}
        except (httpx.HTTPError, ValueError):
            return []
        warnings = []
        if isinstance(info, dict) and info.get("enable_metrics") is False:
            warnings.append("SGLang runs without --enable-metrics: heartbeats carry no queue or cache figures")
        return warnings

    async def info(self) -> ModelInfo:
        """Model path from ``/model_info`` and context length from ``/v1/models``."""
        model = await self._model_info()
        context = 0
        with wrap_errors("sglang /v1/models"):
            response = await self._http().get("/v1/models")
            if response.is_success:
                cards = response.json().get("data") or [{}]
                context = int(cards[0].get("max_model_len") or 0)
        return ModelInfo(name=str(model.get("model_path", "")), context_length=context, backend=self.name)

    async def metrics(self) -> dict[str, float]:
        """``sglang:*`` gauges from ``/metrics`` (needs ``--enable-metrics``) plus ``in_flight``."""
        values: dict[str, float] = {"in_flight": float(self._in_flight)}
        try:
            response = await self._http().get("/metrics", timeout=5.0)
        except (httpx.HTTPError, BackendError):
            return values
        if response.is_success:
            values.update(parse_prometheus(response.text, "sglang:"))
        return values

    async def chat(self, request: ChatRequest, slice_tokens: int | None = None) -> ChatResult:
        """One call or one slice; see the module doc for how resuming works."""
        jsonmode.check_schema(request)
        if request.wants_json:
            slice_tokens = None  # see "Limits" in the module doc
        budget, sliced = completion_budget(request, slice_tokens)
        started = time.monotonic()
        self._in_flight += 1
        self._calls += 1
        try:
            prompt_ids = await self._prompt_ids(request)
            resumed = request.resume.token_ids if request.resume else ()
            body = {
                "input_ids": [*prompt_ids, *resumed],
                "sampling_params": _sampling_params(request, budget),
                "stream": streaming(self.stream, sliced),
                "rid": uuid.uuid4().hex,
            }
            final = await self._generate(body)
            result = await self._result(request, final, sliced, time.monotonic() - started)
        finally:
            self._in_flight -= 1
        jsonmode.validate_output(request, result)
        return result

    # -- helpers -------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise BackendUnavailable("sglang backend is not started")
        return self._client

    async def _model_info(self) -> dict[str, Any]:
        # Newer SGLang serves /model_info; older versions only /get_model_info.
        with wrap_errors("sglang /model_info"):
            for path in ("/model_info", "/get_model_info"):
                response = await self._http().get(path)
                if response.status_code != 404:
                    await raise_for_status(response, f"sglang {path}")
                    data: dict[str, Any] = response.json()
                    return data
        raise BackendUnavailable("sglang serves neither /model_info nor /get_model_info")

    async def _chat_template(self) -> ChatTemplate:
        if self._template is None:
            source = self._template_source
            if source is None:
                source = str((await self._model_info()).get("model_path", ""))
            if Path(source).is_dir():
                self._template = ChatTemplate.from_model_dir(source)
            elif "{%" in source or "{{" in source:
                self._template = ChatTemplate(source)
            else:
                raise BackendUnavailable(f"no chat template: {source!r} is not a local model folder")
        return self._template

    async def _prompt_ids(self, request: ChatRequest) -> tuple[int, ...]:
        prompt = (await self._chat_template()).render(request)
        cached = self._token_cache.get(prompt)
        if cached is not None:
            return cached
        with wrap_errors("sglang /tokenize"):
            # The template already holds any BOS text, as with apply_chat_template.
            response = await self._http().post("/tokenize", json={"prompt": prompt, "add_special_tokens": False})
            await raise_for_status(response, "sglang /tokenize")
            ids = tuple(int(t) for t in response.json()["tokens"])
        if len(self._token_cache) >= _TOKENIZE_CACHE_SIZE:
            self._token_cache.pop(next(iter(self._token_cache)))
        self._token_cache[prompt] = ids
        return ids

    async def _generate(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            with wrap_errors("sglang /generate"):
                if not body["stream"]:
                    with answer_lost("sglang /generate"):
                        response = await self._http().post("/generate", json=body)
                    await raise_for_status(response, "sglang /generate")
                    data: dict[str, Any] = response.json()
                    return data
                return await self._generate_streamed(body)
        except (asyncio.CancelledError, BackendError):
            await asyncio.shield(self._abort(body["rid"]))
            raise

    async def _generate_streamed(self, body: dict[str, Any]) -> dict[str, Any]:
        final: dict[str, Any] = {}
        ids: list[int] = []
        async with self._http().stream("POST", "/generate", json=body) as response:
            await raise_for_status(response, "sglang /generate")
            with stream_breaks("sglang /generate", lambda: len(ids)):
                async for event in sse_events(response):
                    ids = _merge_output_ids(ids, event)
                    final = event
        return {**final, "output_ids": ids}

    async def _abort(self, rid: str) -> None:
        # Frees the server's slot at once instead of letting it finish for nobody.
        with contextlib.suppress(httpx.HTTPError, BackendError):
            await self._http().post("/abort_request", json={"rid": rid}, timeout=5.0)

    async def _detokenize(self, ids: tuple[int, ...]) -> str:
        with wrap_errors("sglang /detokenize"):
            response = await self._http().post("/detokenize", json={"tokens": list(ids)})
            await raise_for_status(response, "sglang /detokenize")
            return str(response.json()["text"])

    async def _result(self, request: ChatRequest, final: dict[str, Any], sliced: bool, run_time: float) -> ChatResult:
        meta = final.get("meta_info") or {}
        finish = meta.get("finish_reason") or {}
        # No final reason (a stream cut short) or an abort: the generation is incomplete.
        what = "sglang /generate" + (f" ({finish['message']})" if finish.get("message") else "")
        produced = int(meta.get("completion_tokens") or 0)
        reason = finish_reason(finish.get("type"), sliced=sliced, what=what, produced=produced)
        resume = request.resume
        token_ids = (*(resume.token_ids if resume else ()), *(int(t) for t in final.get("output_ids") or ()))
        # Decoding all ids at once keeps text exact across slice boundaries.
        text = await self._detokenize(token_ids) if resume else str(final.get("text", ""))
        # SGLang looks for stop strings in new output only; one may span the resume
        # point. The resumed text itself holds none, or the last slice would have stopped.
        cut = find_stop(text, request.stop)
        if cut is not None:
            text, reason = text[:cut], "stop"
        content, calls = parse_tool_calls(text, request.tools) if reason == "stop" else (text, ())
        usage = Usage(
            prompt_tokens=int(meta.get("prompt_tokens", 0)),
            completion_tokens=int(meta.get("completion_tokens", 0)),
            cached_tokens=int(meta.get("cached_tokens", 0)),
        )
        return ChatResult(
            text=content,
            finish_reason="tool_calls" if calls else reason,
            tool_calls=calls,
            usage=usage,
            token_ids=token_ids,
            run_time=run_time,
            model=request.model or "",
        )


def _sampling_params(request: ChatRequest, budget: int) -> dict[str, Any]:
    params: dict[str, Any] = {
        "max_new_tokens": budget,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "skip_special_tokens": True,
    }
    if request.stop:
        params["stop"] = list(request.stop)
    if request.seed is not None:
        params["sampling_seed"] = request.seed
    schema = jsonmode.decoding_schema(request)
    if schema is not None:
        params["json_schema"] = json.dumps(schema)
    return params


def _merge_output_ids(ids: list[int], event: dict[str, Any]) -> list[int]:
    """Follow ``output_ids`` whether the server streams them cumulative or incremental.

    ``meta_info.completion_tokens`` is always cumulative, so it tells the two apart.
    """
    chunk = [int(t) for t in event.get("output_ids") or ()]
    total = int((event.get("meta_info") or {}).get("completion_tokens", len(chunk)))
    if len(chunk) == total:
        return chunk
    return ids + chunk
