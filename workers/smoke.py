"""Smoke test of a backend on the machine that runs it (e.g. a GPU host with SGLang).

    python -m aiosd.workers.smoke --backend sglang --url http://127.0.0.1:30000

Checks health, the server settings the backend can detect, model info and
metrics, runs one greedy chat, then the same chat four times at once while
probing health (every answer must be identical and complete, and health must
hold while the server is busy), then in 4-token time slices, and requires the
texts to be identical (the property aiosd's context switch relies on). Prints
each step; exits 0 when all pass.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .backends import BACKENDS, create_backend
from .backends.base import Backend, ChatRequest, ChatResult, Message

PROMPT = (Message(role="user", content="List three primary colours, comma separated."),)


def main() -> int:
    """Run the smoke test; return the exit code."""
    parser = argparse.ArgumentParser(description="aiosd backend smoke test")
    parser.add_argument("--backend", choices=BACKENDS, default="sglang")
    parser.add_argument("--url", help="server URL (sglang, openai)")
    parser.add_argument("--model-path", help="GGUF (llamacpp) or model folder for the chat template (sglang)")
    parser.add_argument("--model-name", help="openai: model to request")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the server to be healthy")
    args = parser.parse_args()
    return asyncio.run(_run(create_backend(args.backend, **_options(args)), args.max_tokens, args.wait))


def _options(args: argparse.Namespace) -> dict[str, Any]:
    if args.backend == "llamacpp":
        return {"model_path": args.model_path} if args.model_path else {}
    if not args.url:
        sys.exit(f"--url is required for the {args.backend} backend")
    if args.backend == "openai":
        return {"url": args.url, "model": args.model_name} if args.model_name else {"url": args.url}
    return {"url": args.url, "chat_template": args.model_path} if args.model_path else {"url": args.url}


async def _run(backend: Backend, max_tokens: int, wait: float) -> int:
    await backend.start()
    try:
        healthy = await _healthy(backend, wait)
        _step("health", healthy, "" if healthy else f"not healthy after {wait:g}s")
        if not healthy:
            return 1
        warnings = await backend.check()
        _step("settings", True, "; ".join(warnings) or "no known-bad setting detected")
        info = await backend.info()
        _step("model_info", True, f"{info.name} (context {info.context_length})")
        _step("metrics", True, ", ".join(f"{k}={v:g}" for k, v in sorted((await backend.metrics()).items())[:6]))
        request = ChatRequest(messages=PROMPT, max_tokens=max_tokens, temperature=0.0)
        whole = await backend.chat(request)
        _step("chat", bool(whole.text.strip()), repr(whole.text[:80]))
        concurrent_ok = await _concurrent(backend, request, whole)
        sliced, slices = await _sliced(backend, request)
        same = sliced.text == whole.text
        _step("time slices", same, f"{slices} slices, {'identical' if same else 'DIFFERENT'} text")
        return 0 if whole.text.strip() and same and concurrent_ok else 1
    finally:
        await backend.close()


async def _healthy(backend: Backend, wait: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while not await backend.health():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(1.0)
    return True


async def _concurrent(backend: Backend, request: ChatRequest, whole: ChatResult, calls: int = 4) -> bool:
    """``calls`` copies of the chat at once, probing health every 0.2 s until they end."""
    tasks = [asyncio.create_task(backend.chat(request)) for _ in range(calls)]
    probes: list[bool] = []
    while not all(task.done() for task in tasks):
        probes.append(await backend.health())
        await asyncio.sleep(0.2)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    same = sum(isinstance(r, ChatResult) and r.text == whole.text for r in results)
    ok = same == calls and all(probes)
    _step("concurrent", ok, f"{same}/{calls} answers identical, healthy in {sum(probes)}/{len(probes)} probes")
    return ok


async def _sliced(backend: Backend, request: ChatRequest) -> tuple[ChatResult, int]:
    result = await backend.chat(request, slice_tokens=4)
    slices = 1
    while result.finish_reason == "slice":
        result = await backend.chat(request.model_copy(update={"resume": result.resume()}), slice_tokens=4)
        slices += 1
    return result, slices


def _step(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name:12} {detail}")


if __name__ == "__main__":
    sys.exit(main())
