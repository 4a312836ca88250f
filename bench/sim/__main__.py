"""``python -m bench.sim``: serve simulated GPUs on 127.0.0.1 until SIGINT/SIGTERM.

Prints one ready line per server once all answer, e.g.
``bench.sim ready 0 http://127.0.0.1:30000``, then ``bench.sim ready all``.
Run from the repository root (or with ``bench/`` on ``sys.path`` as ``python -m sim``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from . import calibration
from .chat import MODEL_DIR
from .engine import EngineConfig
from .server import SimOptions, Simulator
from .serving import serve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.sim",
        description=f"Simulated {calibration.MODEL_NAME} on {calibration.GPU_NAME} speaking SGLang's and OpenAI's HTTP APIs.",
    )
    p.add_argument("--port", type=int, default=30000, help="first port (0: free ports); server i listens on port+i")
    p.add_argument("--count", type=int, default=1, help="how many simulated GPUs (one server each) in this process")
    p.add_argument("--time-scale", type=float, default=1.0, help="wall seconds per simulated second (0.05: 20x faster)")
    p.add_argument("--max-running", type=int, default=calibration.MAX_RUNNING, help="max running requests")
    p.add_argument("--cache-tokens", type=int, default=calibration.CACHE_TOKENS, help="KV pool size in tokens")
    p.add_argument("--block-tokens", type=int, default=calibration.BLOCK_TOKENS, help="prefix-cache block size")
    p.add_argument("--chunk-tokens", type=int, default=calibration.CHUNK_TOKENS, help="prefill tokens per batch")
    p.add_argument("--context-length", type=int, default=calibration.CONTEXT_LENGTH)
    p.add_argument("--model-path", default=str(MODEL_DIR), help="model folder /model_info names (its chat template)")
    p.add_argument("--served-model-name", default=None, help="model id in /v1/models (default: the model path)")
    p.add_argument(
        "--default-output-tokens",
        type=int,
        default=None,
        help="reply length when the prompt has no [[sim:out=N]] (default: run to max_new_tokens)",
    )
    p.add_argument("--default-max-tokens", type=int, default=calibration.DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--log-level", default="warning")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    config = EngineConfig(
        time_scale=args.time_scale,
        max_running=args.max_running,
        cache_tokens=args.cache_tokens,
        block_tokens=args.block_tokens,
        chunk_tokens=args.chunk_tokens,
        context_length=args.context_length,
    )
    options = SimOptions(
        model_path=args.model_path,
        served_model_name=args.served_model_name,
        default_output=args.default_output_tokens,
        default_max_tokens=args.default_max_tokens,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sims = [Simulator(config, options) for _ in range(args.count)]
    async with serve(sims, port=args.port, log_level=args.log_level) as urls:
        for i, url in enumerate(urls):
            print(f"bench.sim ready {i} {url}", flush=True)
        print("bench.sim ready all", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.count < 1:
        print("--count must be at least 1", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(args))
    except (ValueError, OSError) as exc:
        print(f"bench.sim: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
