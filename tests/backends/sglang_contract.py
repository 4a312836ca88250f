"""A contract server that speaks SGLang's native HTTP shapes, for tests.

SGLang needs a CUDA GPU, so the ``sglang`` backend is tested against this
stand-in. The shapes follow SGLang's own source and docs:

- ``python/sglang/srt/entrypoints/http_server.py``: routes ``/health``,
  ``/model_info`` (and the older ``/get_model_info``), ``/generate``
  (``stream`` -> ``text/event-stream`` of ``data: {json}\\n\\n`` lines closed by
  ``data: [DONE]``), ``/abort_request`` (``{"rid": ...}``), ``/tokenize``,
  ``/detokenize``, ``/v1/models``;
- ``python/sglang/srt/managers/tokenizer_manager.py``: each output is
  ``{"text": <cumulative>, "output_ids": [...], "meta_info": {"id",
  "finish_reason": None | {"type": "stop"|"length"|"abort", ...},
  "prompt_tokens", "completion_tokens", "cached_tokens"}}``;
- docs ``basic_usage/native_api`` and ``basic_usage/sampling_params``:
  ``sampling_params`` (``max_new_tokens``, ``temperature``, ``top_p``, ``stop``,
  ``json_schema``, ``regex``), ``input_ids`` as an alternative to ``text``;
- docs ``references/production_metrics``: Prometheus gauges
  ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:token_usage``,
  ``sglang:cache_hit_rate`` labelled with ``model_name``.

``/health`` answers 503 for the first ``starting_requests`` probes, like a
server still loading its weights, then 200.

The fake model is deterministic and character-level (token id = code point):
after the last ``<|im_start|>assistant\\n`` of its input it spells
``"Echo: <last user text>"`` -- or ``{"answer": 42}`` under ``json_schema`` --
then stops. Because it reads the whole input, a resumed call continues
correctly only if the client sent prompt ids + generated ids.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ASSISTANT = "<|im_start|>assistant\n"
#: The ChatML template the tests' fake model folder holds (SmolLM2 and Qwen use ChatML).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
EOS_ID = 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tokenize(text: str) -> list[int]:
    """The contract tokenizer: one token per character."""
    return [ord(c) for c in text]


def detokenize(ids: list[int]) -> str:
    """Inverse of :func:`tokenize`; the EOS id decodes to nothing."""
    return "".join(chr(i) for i in ids if i != EOS_ID)


def reply_for(context: str, sampling: dict[str, Any]) -> str:
    """The whole answer the fake model gives for a prompt."""
    if sampling.get("json_schema"):
        return '{"answer": 42}'
    users = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", context, re.DOTALL)
    return f"Echo: {users[-1] if users else ''}"


class ContractState:
    """Everything the server remembers: counters, aborts, a prefix cache."""

    def __init__(self, starting_requests: int, token_delay: float, incremental_ids: bool) -> None:
        self.lock = threading.Lock()
        self.health_probes = 0
        self.starting_requests = starting_requests
        self.token_delay = token_delay
        self.incremental_ids = incremental_ids
        self.aborted: set[str] = set()
        self.seen_rids: list[str] = []
        self.running = 0
        self.cache: list[list[int]] = []
        self.requests: list[dict[str, Any]] = []

    def cached_prefix(self, ids: list[int]) -> int:
        with self.lock:
            best = 0
            for seq in self.cache:
                n = 0
                for a, b in zip(seq, ids, strict=False):
                    if a != b:
                        break
                    n += 1
                best = max(best, n)
            return best


class _Handler(BaseHTTPRequestHandler):
    server: ContractServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean

    def do_GET(self) -> None:
        state = self.server.state
        if self.path == "/health":
            with state.lock:
                state.health_probes += 1
                ready = state.health_probes > state.starting_requests
            self._send(200 if ready else 503, b"")
        elif self.path in ("/model_info", "/get_model_info"):
            self._json(
                200,
                {
                    "model_path": self.server.model_path,
                    "tokenizer_path": self.server.model_path,
                    "is_generation": True,
                    "preferred_sampling_params": None,
                    "weight_version": "default",
                },
            )
        elif self.path == "/v1/models":
            card = {
                "id": self.server.model_path,
                "object": "model",
                "owned_by": "sglang",
                "root": self.server.model_path,
                "max_model_len": 2048,
            }
            self._json(200, {"object": "list", "data": [card]})
        elif self.path in ("/get_server_info", "/server_info"):
            # SGLang merges its server arguments into this answer (abridged here).
            self._json(
                200,
                {
                    "model_path": self.server.model_path,
                    "enable_metrics": self.server.enable_metrics,
                    "version": "contract",
                },
            )
        elif self.path == "/metrics":
            self._send(200, self._metrics().encode(), "text/plain; version=0.0.4")
        else:
            self._json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        state = self.server.state
        if self.path == "/generate":
            self._generate(body)
        elif self.path == "/abort_request":
            with state.lock:
                state.aborted.add(str(body.get("rid", "")))
            self._send(200, b"")
        elif self.path == "/tokenize":
            ids = tokenize(body["prompt"])
            self._json(200, {"tokens": ids, "count": len(ids), "max_model_len": 2048})
        elif self.path == "/detokenize":
            self._json(200, {"text": detokenize(body["tokens"])})
        else:
            self._json(404, {"detail": "Not Found"})

    # -- /generate ----------------------------------------------------------------

    def _generate(self, body: dict[str, Any]) -> None:
        state = self.server.state
        ids = list(body["input_ids"]) if body.get("input_ids") is not None else tokenize(body.get("text", ""))
        rid = str(body.get("rid") or f"rid-{time.monotonic_ns()}")
        with state.lock:
            state.requests.append(body)
            state.seen_rids.append(rid)
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            sent = 0
            for out in self._outputs(ids, rid, body.get("sampling_params") or {}):
                if state.incremental_ids:
                    out = dict(out, output_ids=out["output_ids"][sent:])
                sent += len(out["output_ids"]) if state.incremental_ids else 0
                self.wfile.write(b"data: " + json.dumps(out).encode() + b"\n\n")
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
        else:
            *_, last = self._outputs(ids, rid, body.get("sampling_params") or {})
            self._json(200, last)

    def _outputs(self, ids: list[int], rid: str, sampling: dict[str, Any]) -> Any:
        """Yield SGLang's per-step outputs (cumulative text and ids)."""
        state = self.server.state
        cached = state.cached_prefix(ids)
        context = detokenize(ids)
        generated_before = context.rpartition(ASSISTANT)[2]
        reply = reply_for(context, sampling)
        stops = sampling.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        out_ids: list[int] = []
        finish: dict[str, Any] | None = None
        with state.lock:
            state.running += 1
        try:
            while finish is None:
                time.sleep(state.token_delay)
                finish = self._step(generated_before, reply, out_ids, sampling, stops, rid)
                yield self._output(rid, ids, out_ids, cached, finish)
        finally:
            with state.lock:
                state.running -= 1
                state.cache.append(ids + out_ids)

    def _step(
        self, before: str, reply: str, out_ids: list[int], sampling: dict[str, Any], stops: list[str], rid: str
    ) -> dict[str, Any] | None:
        if rid in self.server.state.aborted:
            return {"type": "abort", "message": "Abort request " + rid}
        done = before + detokenize(out_ids)
        if len(done) >= len(reply) or not reply.startswith(done):
            out_ids.append(EOS_ID)
            return {"type": "stop", "matched": EOS_ID}
        out_ids.append(ord(reply[len(done)]))
        text = detokenize(out_ids)
        for stop in stops:
            if stop in text:
                return {"type": "stop", "matched": stop}
        if len(out_ids) >= int(sampling.get("max_new_tokens", 128)):
            return {"type": "length", "length": len(out_ids)}
        return None

    def _output(
        self, rid: str, ids: list[int], out_ids: list[int], cached: int, finish: dict[str, Any] | None
    ) -> dict[str, Any]:
        text = detokenize(out_ids)
        if finish and finish.get("type") == "stop" and isinstance(finish.get("matched"), str):
            text = text[: text.find(finish["matched"])]  # SGLang trims the stop string
        meta = {
            "id": rid,
            "finish_reason": finish,
            "prompt_tokens": len(ids),
            "completion_tokens": len(out_ids),
            "cached_tokens": cached,
            "weight_version": "default",
        }
        return {"text": text, "output_ids": list(out_ids), "meta_info": meta}

    # -- plumbing -----------------------------------------------------------------

    def _metrics(self) -> str:
        state = self.server.state
        label = f'{{model_name="{self.server.model_path}"}}'
        lines = [
            "# HELP sglang:num_running_reqs The number of running requests.",
            "# TYPE sglang:num_running_reqs gauge",
            f"sglang:num_running_reqs{label} {float(state.running)}",
            "# TYPE sglang:num_queue_reqs gauge",
            f"sglang:num_queue_reqs{label} 0.0",
            "# TYPE sglang:token_usage gauge",
            f"sglang:token_usage{label} 0.25",
            "# TYPE sglang:cache_hit_rate gauge",
            f"sglang:cache_hit_rate{label} 0.5",
            "# TYPE sglang:e2e_request_latency_seconds histogram",
            f'sglang:e2e_request_latency_seconds_bucket{{le="1.0",model_name="{self.server.model_path}"}} 3.0',
        ]
        return "\n".join(lines) + "\n"

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class ContractServer(ThreadingHTTPServer):
    """The contract server on 127.0.0.1 and a free port; use as a context manager."""

    daemon_threads = True

    def __init__(
        self,
        model_path: str,
        *,
        starting_requests: int = 0,
        token_delay: float = 0.0,
        incremental_ids: bool = False,
        enable_metrics: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__((host, port), _Handler)
        self.host = host
        self.model_path = model_path
        self.enable_metrics = enable_metrics
        self.state = ContractState(starting_requests, token_delay, incremental_ids)
        self._thread = threading.Thread(target=self.serve_forever, name="sglang-contract", daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        return f"http://{self.host}:{self.server_address[1]}"

    def __enter__(self) -> ContractServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


def main() -> None:
    """Serve until killed (for tests that kill the server for real)."""
    import argparse

    parser = argparse.ArgumentParser(description="SGLang contract server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--token-delay", type=float, default=0.0)
    args = parser.parse_args()
    ContractServer(args.model_path, token_delay=args.token_delay, port=args.port).serve_forever()


if __name__ == "__main__":
    main()
