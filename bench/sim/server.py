"""The simulator's HTTP face: SGLang's native API and the OpenAI chat API, on Starlette.

Routes (shapes as SGLang's ``http_server.py`` and the OpenAI API give them, the
ones the worker's ``sglang`` and ``openai`` backends use):

- ``POST /generate`` -- ``text`` or ``input_ids``, ``sampling_params``
  (``max_new_tokens``, ``stop``, ``ignore_eos``), ``stream``, ``rid``; answers
  ``{"text", "output_ids", "meta_info": {"id", "finish_reason", "prompt_tokens",
  "completion_tokens", "cached_tokens", "e2e_latency", "sim"}}``, streamed as
  ``data: {...}`` events (cumulative ``text`` and ``output_ids``) closed by
  ``data: [DONE]``; ``POST /abort_request``, ``/tokenize``, ``/detokenize``,
  ``/flush_cache``; ``GET /health``, ``/model_info`` (``/get_model_info``),
  ``/get_server_info`` (``/server_info``), ``/metrics`` (Prometheus, ``sglang:*``);
- ``GET /v1/models``, ``POST /v1/chat/completions`` (``usage`` with
  ``prompt_tokens_details.cached_tokens``; streamed with ``stream_options.include_usage``);
- ``GET /sim/stats`` (JSON: cache hit rate, requests, running/queued...) and
  ``POST /sim/reset`` (zero the counters; ``{"flush_cache": true}`` empties the cache too).

Not simulated: batch requests (lists of prompts), tool calls and JSON-schema
decoding (the model always says its one sentence), logprobs, ``n`` > 1.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from . import calibration, tokenizer
from .chat import MODEL_DIR, ChatFormat
from .engine import Engine, EngineConfig, SimRequest
from .model import plan


class BadRequest(ValueError):
    """The request is malformed: HTTP 400."""


@dataclass(frozen=True)
class SimOptions:
    """What the server says about its model, and output-length defaults."""

    model_path: str = str(MODEL_DIR)
    served_model_name: str | None = None  # SGLang's default: the model path
    default_output: int | None = None  # tokens a reply has when the prompt names none
    default_max_tokens: int = calibration.DEFAULT_MAX_NEW_TOKENS

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model_path


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": status}}, status)


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _int(body: dict[str, Any], key: str, default: int) -> int:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"{key} must be a positive integer")
    return value


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(s for s in value if s)
    raise BadRequest("stop must be a string or a list of strings")


class Simulator:
    """One simulated GPU server: an :class:`~.engine.Engine` behind a Starlette app."""

    def __init__(self, config: EngineConfig | None = None, options: SimOptions | None = None) -> None:
        self.engine = Engine(config)
        self.options = options or SimOptions()
        self._chat: ChatFormat | None = None
        self.started_wall = time.time()
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/health_generate", self.health, methods=["GET"]),
            Route("/model_info", self.model_info, methods=["GET"]),
            Route("/get_model_info", self.model_info, methods=["GET"]),
            Route("/server_info", self.server_info, methods=["GET"]),
            Route("/get_server_info", self.server_info, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/generate", self._guarded(self.generate), methods=["POST"]),
            Route("/v1/chat/completions", self._guarded(self.chat_completions), methods=["POST"]),
            Route("/tokenize", self._guarded(self.tokenize), methods=["POST"]),
            Route("/detokenize", self._guarded(self.detokenize), methods=["POST"]),
            Route("/abort_request", self._guarded(self.abort_request), methods=["POST"]),
            Route("/flush_cache", self.flush_cache, methods=["GET", "POST"]),
            Route("/sim/stats", self.sim_stats, methods=["GET"]),
            Route("/sim/reset", self._guarded(self.sim_reset), methods=["POST"]),
        ]
        self.app = Starlette(routes=routes, lifespan=self._lifespan)

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.engine.start()
        try:
            yield
        finally:
            await self.engine.stop()

    def _guarded(self, handler: Callable[[dict[str, Any]], Any]) -> Callable[[Request], Any]:
        """A JSON-body endpoint: malformed input answers 400 with the reason."""

        async def endpoint(request: Request) -> Response:
            try:
                body = await request.json()
            except ValueError:
                return _error(400, "the body is not JSON")
            if not isinstance(body, dict):
                return _error(400, "the body must be a JSON object")
            await self.engine.start()  # no-op when the lifespan did it (httpx's ASGI transport runs none)
            try:
                response: Response = await handler(body)
            except BadRequest as exc:
                return _error(400, str(exc))
            except ValueError as exc:
                return _error(400, str(exc))
            return response

        return endpoint

    # -- model and server ---------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def model_info(self, request: Request) -> Response:
        path = self.options.model_path
        return JSONResponse(
            {
                "model_path": path,
                "tokenizer_path": path,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": "default",
            }
        )

    async def server_info(self, request: Request) -> Response:
        c = self.engine.config
        return JSONResponse(
            {
                "model_path": self.options.model_path,
                "served_model_name": self.options.model_name,
                "version": "bench.sim",
                "enable_metrics": True,
                "max_running_requests": c.max_running,
                "max_total_num_tokens": c.cache_tokens,
                "chunked_prefill_size": c.chunk_tokens,
                "page_size": c.block_tokens,
                "context_length": c.context_length,
                "schedule_policy": "fcfs",
                "simulated": {
                    "model": calibration.MODEL_NAME,
                    "gpu": calibration.GPU_NAME,
                    "time_scale": c.time_scale,
                    "decode_base_s": c.decode_base_s,
                    "decode_per_seq_s": c.decode_per_seq_s,
                    "decode_per_kv_token_s": c.decode_per_kv_token_s,
                    "prefill_per_token_s": c.prefill_per_token_s,
                    "prefill_attention_s": c.prefill_attention_s,
                },
            }
        )

    async def models(self, request: Request) -> Response:
        card = {
            "id": self.options.model_name,
            "object": "model",
            "created": int(self.started_wall),
            "owned_by": "bench.sim",
            "root": self.options.model_path,
            "max_model_len": self.engine.config.context_length,
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def metrics(self, request: Request) -> Response:
        stats = self.engine.stats()
        label = '{model_name="' + self.options.model_name.replace("\\", "\\\\").replace('"', '\\"') + '"}'
        gauges = {
            "num_running_reqs": stats["running"],
            "num_queue_reqs": stats["queued"],
            "token_usage": stats["token_usage"],
            "cache_hit_rate": stats["cache_hit_rate"],
        }
        counters = {
            "prompt_tokens_total": stats["prompt_tokens"],
            "cached_tokens_total": stats["cached_tokens"],
            "generation_tokens_total": stats["generated_tokens"],
            "num_requests_total": stats["requests_finished"],
        }
        lines = []
        for kind, values in (("gauge", gauges), ("counter", counters)):
            for name, value in values.items():
                lines += [f"# TYPE sglang:{name} {kind}", f"sglang:{name}{label} {float(value)}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def sim_stats(self, request: Request) -> Response:
        c = self.engine.config
        return JSONResponse(
            {
                **self.engine.stats(),
                "model": self.options.model_name,
                "time_scale": c.time_scale,
                "max_running": c.max_running,
                "block_tokens": c.block_tokens,
            }
        )

    async def sim_reset(self, body: dict[str, Any]) -> Response:
        flushed = self.engine.flush_cache() if body.get("flush_cache") else 0
        self.engine.reset_counters()
        return JSONResponse({"flushed_blocks": flushed})

    async def flush_cache(self, request: Request) -> Response:
        flushed = self.engine.flush_cache()
        return PlainTextResponse(f"Cache flushed ({flushed} blocks).\n")

    # -- tokens ---------------------------------------------------------------------

    async def tokenize(self, body: dict[str, Any]) -> Response:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string")
        ids = tokenizer.encode(prompt)
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": self.engine.config.context_length})

    async def detokenize(self, body: dict[str, Any]) -> Response:
        return JSONResponse({"text": tokenizer.decode(self._ids(body.get("tokens")))})

    async def abort_request(self, body: dict[str, Any]) -> Response:
        self.engine.abort(str(body.get("rid", "")))
        return Response(status_code=200)

    @staticmethod
    def _ids(value: Any) -> list[int]:
        if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            raise BadRequest("token ids must be a list of integers")
        if any(t < 0 or t > tokenizer.MAX_ID for t in value):
            raise BadRequest(f"token ids must be between 0 and {tokenizer.MAX_ID}")
        return list(value)

    def _submit(self, ids: list[int], sampling: dict[str, Any], budget: int, rid: str | None) -> SimRequest:
        room = self.engine.config.context_length - len(ids)
        if room < 1:
            raise BadRequest(f"the input ({len(ids)} tokens) fills the context length")
        stops = _stops(sampling.get("stop"))
        eos = not sampling.get("ignore_eos")
        output = plan(ids, min(budget, room), stops, self.options.default_output, eos=eos)
        return self.engine.submit(ids, output, rid)

    # -- SGLang native ----------------------------------------------------------------

    async def generate(self, body: dict[str, Any]) -> Response:
        text, input_ids = body.get("text"), body.get("input_ids")
        if (text is None) == (input_ids is None):
            raise BadRequest("give exactly one of text and input_ids")
        if isinstance(text, list) or (isinstance(input_ids, list) and input_ids and isinstance(input_ids[0], list)):
            raise BadRequest("batch requests are not simulated: send one prompt per request")
        if text is not None and not isinstance(text, str):
            raise BadRequest("text must be a string")
        ids = tokenizer.encode(text) if isinstance(text, str) else self._ids(input_ids)
        sampling = body.get("sampling_params") or {}
        if not isinstance(sampling, dict):
            raise BadRequest("sampling_params must be an object")
        budget = _int(sampling, "max_new_tokens", self.options.default_max_tokens)
        rid = body.get("rid")
        req = self._submit(ids, sampling, budget, str(rid) if rid is not None else None)
        started = time.monotonic()
        if body.get("stream"):
            return StreamingResponse(self._generate_events(req, started), media_type="text/event-stream")
        await self._wait(req)
        return JSONResponse(self._generate_output(req, started))

    async def _wait(self, req: SimRequest) -> None:
        try:
            await req.done.wait()
        finally:
            if not req.done.is_set():  # the client went away
                self.engine.abort(req.rid)

    def _generate_output(self, req: SimRequest, started: float) -> dict[str, Any]:
        meta = {
            "id": req.rid,
            "finish_reason": req.finish,
            "prompt_tokens": len(req.ids),
            "completion_tokens": req.produced,
            "cached_tokens": req.cached,
            "e2e_latency": time.monotonic() - started,
            "sim": self._sim_meta(req),
        }
        return {"text": req.plan.text(req.produced), "output_ids": req.output_ids(), "meta_info": meta}

    @staticmethod
    def _sim_meta(req: SimRequest) -> dict[str, Any]:
        """Simulated seconds: arrival (since the server started), queueing, time to first token, end to end."""
        return {
            "arrival": req.arrival,
            "queue_time": None if req.admitted_at is None else req.admitted_at - req.arrival,
            "ttft": req.ttft,
            "e2e": None if req.finished_at is None else req.finished_at - req.arrival,
        }

    async def _generate_events(self, req: SimRequest, started: float) -> AsyncIterator[str]:
        try:
            async for _ in self._progress(req):
                yield _sse(self._generate_output(req, started))
            yield "data: [DONE]\n\n"
        finally:
            if not req.done.is_set():
                self.engine.abort(req.rid)

    @staticmethod
    async def _progress(req: SimRequest) -> AsyncIterator[int]:
        """Yield the produced count each time it changes, and once more when the request ends."""
        sent = 0
        while True:
            req.changed.clear()
            done = req.done.is_set()
            if req.produced != sent or done:
                sent = req.produced
                yield sent
            if done:
                return
            await req.changed.wait()

    # -- OpenAI chat ------------------------------------------------------------------

    async def chat_completions(self, body: dict[str, Any]) -> Response:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise BadRequest("messages must be a non-empty list of objects")
        if self._chat is None:
            self._chat = ChatFormat(self.options.model_path)
        continue_final = bool(body.get("continue_final_message")) or body.get("add_generation_prompt") is False
        ids = tokenizer.encode(self._chat.render(messages, continue_final=continue_final))
        budget = _int(body, "max_completion_tokens", _int(body, "max_tokens", self.options.default_max_tokens))
        req = self._submit(ids, body, budget, None)
        created = int(time.time())
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if body.get("stream"):
            return StreamingResponse(self._chat_events(req, created, include_usage), media_type="text/event-stream")
        await self._wait(req)
        reason = self._openai_reason(req)
        if reason is None:
            return _error(503, f"generation aborted: {(req.finish or {}).get('message', '')}")
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": req.plan.text(req.produced)},
            "logprobs": None,
            "finish_reason": reason,
        }
        return JSONResponse(
            {**self._chat_head(req, created, "chat.completion"), "choices": [choice], "usage": self._usage(req)}
        )

    def _chat_head(self, req: SimRequest, created: int, kind: str) -> dict[str, Any]:
        return {"id": f"chatcmpl-{req.rid}", "object": kind, "created": created, "model": self.options.model_name}

    @staticmethod
    def _openai_reason(req: SimRequest) -> str | None:
        kind = (req.finish or {}).get("type")
        return kind if kind in ("stop", "length") else None

    @staticmethod
    def _usage(req: SimRequest) -> dict[str, Any]:
        return {
            "prompt_tokens": len(req.ids),
            "completion_tokens": req.produced,
            "total_tokens": len(req.ids) + req.produced,
            "prompt_tokens_details": {"cached_tokens": req.cached},
        }

    async def _chat_events(self, req: SimRequest, created: int, include_usage: bool) -> AsyncIterator[str]:
        head = self._chat_head(req, created, "chat.completion.chunk")
        try:
            yield _sse(
                {
                    **head,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                }
            )
            shown = ""
            async for produced in self._progress(req):
                text = req.plan.text(produced)
                if len(text) > len(shown):
                    delta = {"content": text[len(shown) :]}
                    shown = text
                    yield _sse({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            reason = self._openai_reason(req)
            if reason is not None:  # an aborted stream ends without a finish reason
                yield _sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
                if include_usage:
                    yield _sse({**head, "choices": [], "usage": self._usage(req)})
            yield "data: [DONE]\n\n"
        finally:
            if not req.done.is_set():
                self.engine.abort(req.rid)
