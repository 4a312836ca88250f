"""An instant OpenAI-compatible server: the LLM backend with no model behind it.

A real HTTP/1.1 server (asyncio, keep-alive) on 127.0.0.1 that answers
``GET /v1/models`` and ``POST /v1/chat/completions``, unstreamed or streamed
(server-sent events in chunked encoding, with a finish reason and, when asked
for with ``stream_options.include_usage``, a usage chunk), immediately: the
answer is ``"ok"`` cut to ``max_tokens`` characters, one token per character.
What a call costs against it is therefore what the client and the HTTP path
cost, which is what the kernel is compared with.

Run as a child process by ``bench/kernel.py``::

    python bench/standin.py

It prints ``standin_ready <port>`` once it listens and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

MODEL = "standin-instant"
ANSWER = "ok"
MODELS = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "aiosd-bench"}]}


def completion(body: dict[str, Any]) -> tuple[str, str, dict[str, int]]:
    """The answer, its finish reason and usage for one chat request."""
    budget = int(body.get("max_tokens") or 256)
    text = ANSWER[:budget]
    reason = "stop" if len(ANSWER) <= budget else "length"
    prompt = sum(len(str(m.get("content") or "")) for m in body.get("messages") or []) // 4 + 8
    usage = {"prompt_tokens": prompt, "completion_tokens": len(text), "total_tokens": prompt + len(text)}
    return text, reason, usage


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Serve one connection's requests until the client closes it."""
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path, _version = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length") or 0))
            await route(writer, method, path.split("?", 1)[0], body)
            if headers.get("connection", "").lower() == "close":
                return
    except (ConnectionError, ValueError):
        return
    finally:
        writer.close()


async def route(writer: asyncio.StreamWriter, method: str, path: str, raw: bytes) -> None:
    """Answer one request."""
    if method == "GET" and path in ("/v1/models", "/models"):
        respond(writer, 200, MODELS)
    elif method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
        body = json.loads(raw or b"{}")
        if body.get("stream"):
            stream(writer, body)
        else:
            text, reason, usage = completion(body)
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
            payload = {"id": "chatcmpl-bench", "object": "chat.completion", "model": MODEL, "choices": [choice]}
            respond(writer, 200, {**payload, "usage": usage})
    else:
        respond(writer, 404, {"detail": "Not Found"})
    await writer.drain()


def respond(writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
    """A JSON response with a Content-Length (the connection stays open)."""
    data = json.dumps(payload).encode()
    reason = "OK" if status == 200 else "Not Found"
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    writer.write(head.encode() + data)


def stream(writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
    """A streamed answer: one SSE event per token, the finish reason, usage if asked, ``[DONE]``."""
    text, reason, usage = completion(body)
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": MODEL}
    events: list[dict[str, Any]] = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ch}, "finish_reason": None}]}
        for ch in text
    ]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append({**base, "choices": [], "usage": usage})
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    for event in [*(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events), b"data: [DONE]\n\n"]:
        writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
    writer.write(b"0\r\n\r\n")


async def main() -> None:
    """Listen on a free port of 127.0.0.1 until signalled."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"standin_ready {port}", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
