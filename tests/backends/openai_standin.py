"""An OpenAI-compatible stand-in server that behaves like llama-cpp-python's, for tests.

It speaks ``GET /v1/models`` and ``POST /v1/chat/completions`` (streamed as
server-sent events, or not) with a deterministic character-level fake model
(one token per character) that answers ``"Echo: <last user text>"``, and it
copies the two behaviours of ``llama_cpp.server`` that cut answers short or
make a busy server look dead:

- one model lock: a generation holds it from start to end, and ``/v1/models``
  waits for it too, so a health probe queues behind the generations;
- ``interrupt`` (``llama_cpp.server``'s default ``--interrupt_requests True``):
  a *streamed* generation ends at once, with ``data: [DONE]`` and no finish
  reason, when another request is waiting for the lock.

``drop_after`` makes the server die in the middle of every generation after
that many tokens: the connection closes with no finish reason (streamed) or no
response at all (unstreamed), as when the server is killed.

Run it as a process (``python openai_standin.py --port N [--interrupt]
[--drop-after K] [--token-delay S]``) to kill it for real.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "standin-echo"


def reply_for(messages: list[dict[str, Any]]) -> str:
    """The whole answer of the fake model."""
    users = [str(m.get("content") or "") for m in messages if m.get("role") == "user"]
    return f"Echo: {users[-1] if users else ''}"


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt size in the fake model's tokens (characters of a ChatML rendering)."""
    return sum(len(f"<|im_start|>{m.get('role')}\n{m.get('content') or ''}<|im_end|>\n") for m in messages) + 22


class _ModelLock:
    """llama_cpp.server's model lock, with a count of requests waiting for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.guard = threading.Lock()
        self.waiting = 0

    def acquire(self) -> None:
        with self.guard:
            self.waiting += 1
        self.lock.acquire()
        with self.guard:
            self.waiting -= 1

    def release(self) -> None:
        self.lock.release()


class _Handler(BaseHTTPRequestHandler):
    server: OpenAIStandin

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self.server.model.acquire()  # like llama_cpp.server: behind the generations
            self.server.model.release()
            self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "me"}]})
        elif self.path == "/openapi.json":
            self._json(200, {"openapi": "3.1.0", "info": {"title": "OpenAI stand-in", "version": "1"}})
        else:
            self._json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path != "/v1/chat/completions":
            self._json(404, {"detail": "Not Found"})
            return
        with self.server.counter_lock:
            self.server.requests += 1
        self.server.model.acquire()
        try:
            if body.get("stream"):
                self._streamed(body)
            else:
                self._single(body)
        finally:
            self.server.model.release()

    # -- generation ----------------------------------------------------------------

    def _tokens(self, body: dict[str, Any]) -> tuple[str, str]:
        """The generated text (one char per token, after the delay) and its finish reason."""
        reply = reply_for(body["messages"])
        budget = int(body.get("max_tokens") or 256)
        text = reply[:budget]
        return text, "stop" if len(reply) <= budget else "length"

    def _single(self, body: dict[str, Any]) -> None:
        text, reason = self._tokens(body)
        for i in range(len(text)):
            time.sleep(self.server.token_delay)
            if self.server.drop_after is not None and i >= self.server.drop_after:
                self.close_connection = True
                return  # died mid-generation: the client gets no response at all
        usage = {"prompt_tokens": prompt_tokens(body["messages"]), "completion_tokens": len(text)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        message = {"role": "assistant", "content": text}
        self._json(
            200,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": MODEL,
                "usage": usage,
                "choices": [{"index": 0, "message": message, "finish_reason": reason}],
            },
        )

    def _streamed(self, body: dict[str, Any]) -> None:
        text, reason = self._tokens(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i, char in enumerate(text):
            time.sleep(self.server.token_delay)
            if self.server.drop_after is not None and i >= self.server.drop_after:
                return  # died mid-generation: the stream just ends
            self._event({"choices": [{"index": 0, "delta": {"content": char}, "finish_reason": None}]})
            if self.server.interrupt and self.server.model.waiting:
                self.server.interrupted += 1
                self.wfile.write(b"data: [DONE]\n\n")  # what llama_cpp.server sends when it interrupts
                return
        self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": prompt_tokens(body["messages"]), "completion_tokens": len(text)}
            self._event({"choices": [], "usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")

    def _event(self, chunk: dict[str, Any]) -> None:
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": MODEL, **chunk}
        self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self.wfile.flush()

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class OpenAIStandin(ThreadingHTTPServer):
    """The stand-in on 127.0.0.1 and a free port; use as a context manager."""

    daemon_threads = True

    def __init__(
        self,
        *,
        interrupt: bool = True,
        drop_after: int | None = None,
        token_delay: float = 0.005,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__((host, port), _Handler)
        self.host = host
        self.interrupt = interrupt
        self.drop_after = drop_after
        self.token_delay = token_delay
        self.model = _ModelLock()
        self.counter_lock = threading.Lock()
        self.requests = 0
        self.interrupted = 0
        self._thread = threading.Thread(target=self.serve_forever, name="openai-standin", daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the running server (without ``/v1``)."""
        return f"http://{self.host}:{self.server_address[1]}"

    def __enter__(self) -> OpenAIStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


def main() -> None:
    """Serve until killed (for tests that kill the server for real)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interrupt", action="store_true")
    parser.add_argument("--drop-after", type=int)
    parser.add_argument("--token-delay", type=float, default=0.005)
    args = parser.parse_args()
    server = OpenAIStandin(
        interrupt=args.interrupt, drop_after=args.drop_after, token_delay=args.token_delay, port=args.port
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
