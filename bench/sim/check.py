"""``python -m bench.sim.check``: the simulator against the published figures it was calibrated on.

Runs the engine in process (no HTTP) at a small time scale and prints, for
each workload, the simulated figure beside the published one (see
``calibration.py`` for the sources). Takes a few seconds of wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from .engine import Engine, EngineConfig, SimRequest
from .model import plan


@dataclass
class Outcome:
    makespan: float
    output_tokens: int
    ttfts: list[float]
    tpots: list[float]
    hit_rate: float

    @property
    def throughput(self) -> float:
        return self.output_tokens / self.makespan


def _ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1, 2**31) for _ in range(n)]


async def run(
    config: EngineConfig,
    prompts: Sequence[tuple[list[int], int]],
    rate: float | None = None,
    concurrency: int | None = None,
) -> Outcome:
    """Send ``prompts`` (ids, output tokens): all at once, at ``rate`` per second, or ``concurrency`` at a time."""
    engine = Engine(config)
    await engine.start()
    scale = config.time_scale
    done: list[SimRequest] = []
    gate = asyncio.Semaphore(concurrency or len(prompts))

    async def one(ids: list[int], out: int, delay: float) -> None:
        await asyncio.sleep(delay * scale)
        async with gate:
            req = engine.submit(ids, plan(ids, out, eos=False))
            await req.done.wait()
            done.append(req)

    delays = [i / rate if rate else 0.0 for i in range(len(prompts))]
    await asyncio.gather(*(one(ids, out, d) for (ids, out), d in zip(prompts, delays, strict=True)))
    stats = engine.stats()
    await engine.stop()
    start = min(r.arrival for r in done)
    end = max(r.finished_at or 0.0 for r in done)
    ttfts = [r.ttft or 0.0 for r in done]
    tpots = [((r.finished_at or 0.0) - (r.first_token_at or 0.0)) / (r.produced - 1) for r in done if r.produced > 1]
    return Outcome(end - start, sum(r.produced for r in done), ttfts, tpots, stats["cache_hit_rate"])


async def main(scale: float) -> None:
    rng = random.Random(7)
    config = EngineConfig(time_scale=scale)
    rows: list[tuple[str, str, str]] = []

    solo = await run(config, [(_ids(rng, 1024), 256)])
    rows.append(("batch 1, 1024 in / 256 out: output tok/s", f"{solo.throughput:.0f}", "> 135 (SGLang CI floor)"))

    # Lambda's 10 ShareGPT prompts: their input/output lengths.
    lens = [(13, 120), (25, 429), (27, 233), (10, 194), (329, 101), (29, 741), (399, 9), (328, 3), (4, 6), (205, 31)]
    ten = await run(config, [(_ids(rng, i), o) for i, o in lens])
    rows.append(
        (
            "10 ShareGPT prompts at once: median TPOT ms",
            f"{statistics.median(ten.tpots) * 1e3:.2f}",
            "7.56 (vLLM 0.6, Lambda)",
        )
    )
    rows.append(("  same: median TTFT ms", f"{statistics.median(ten.ttfts) * 1e3:.1f}", "62 (vLLM 0.6, Lambda)"))

    # SGLang CI's online test: 1 req/s, random lengths (uniform up to 1024 in, 1024 out here).
    online = [(_ids(rng, rng.randint(16, 1024)), rng.randint(16, 1024)) for _ in range(40)]
    on = await run(config, online, rate=1.0)
    rows.append(("1 req/s random: median TTFT ms", f"{statistics.median(on.ttfts) * 1e3:.1f}", "< 80 (SGLang CI)"))
    rows.append(("  same: median TPOT ms", f"{statistics.median(on.tpots) * 1e3:.2f}", "< 12 ITL (SGLang CI)"))

    # Saturation: 500 prompts at once, ShareGPT-like lengths.
    burst = [(_ids(rng, rng.randint(32, 512)), rng.randint(32, 512)) for _ in range(500)]
    sat = await run(config, burst)
    rows.append(
        ("500 prompts at once: output tok/s", f"{sat.throughput:.0f}", "> 2830 (SGLang CI); 5333 (runinfra, vLLM)")
    )

    # Prefix caching: 64 clients, 2048-token prompts, 90% shared vs none, 128 out.
    shared = _ids(rng, 1843)
    hot = [(shared + _ids(rng, 205), 128) for _ in range(256)]
    cold = [(_ids(rng, 2048), 128) for _ in range(256)]
    with_hits = await run(config, hot, concurrency=64)
    without = await run(config, cold, concurrency=64)
    rows.append(
        (
            "64 clients, 2k prompts, 90% shared prefix: throughput x",
            f"{with_hits.throughput / without.throughput:.2f} (hit rate {with_hits.hit_rate:.2f})",
            "~2.7x at 90% hit rate (runinfra)",
        )
    )
    rows.append(
        (
            "  same: mean TTFT ms, shared vs not",
            f"{statistics.mean(with_hits.ttfts) * 1e3:.0f} vs {statistics.mean(without.ttfts) * 1e3:.0f}",
            "",
        )
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'workload':<{width}}  {'simulated':<22}  published")
    for name, sim, published in rows:
        print(f"{name:<{width}}  {sim:<22}  {published}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--time-scale", type=float, default=0.02)
    asyncio.run(main(parser.parse_args().time_scale))
