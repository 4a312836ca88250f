"""Figures of a run, the side-by-side tables and the ratios against issue 13's targets."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from .runner import RunRecord


@dataclass
class Figures:
    """What one workload did under one configuration (times in simulated seconds)."""

    config: str
    programs_per_min: float
    completion_mean: float
    completion_p99: float
    programs: int
    hit_rates: list[float]
    hit_rate: float
    interactive_p50: float = float("nan")
    interactive_p99: float = float("nan")
    max_queue: float = 0.0
    errors: int = 0
    by_kind: dict[str, tuple[int, float]] = field(default_factory=dict)  # kind -> (programs, mean completion)
    #: Interactive calls: p99 of their wait in aiosd's queue and of the rest (worker, GPU, transport), by worker.
    interactive_queue_p99: float = float("nan")
    interactive_rest_p99: float = float("nan")
    interactive_by_worker: dict[str, int] = field(default_factory=dict)
    #: The slowest interactive calls: (start, seconds, of which in aiosd's queue), slowest first.
    interactive_slowest: list[tuple[float, float, float]] = field(default_factory=list)


def figures(config: str, record: RunRecord, stats: list[dict[str, Any]], time_scale: float, kinds: set[str]) -> Figures:
    """Summarise ``record`` for the program kinds the workload is judged on."""
    done = [p for p in record.programs if p.kind in kinds]
    # Every program started is run to its end, so throughput is programs over the time they took
    # (first start to last end): a window cut at a fixed time would count slow configurations' programs late.
    span = max((p.end for p in done), default=1.0) - min((p.start for p in done), default=0.0)
    times = [p.end - p.start for p in done]
    prompt = sum(float(s["prompt_tokens"]) for s in stats)
    cached = sum(float(s["cached_tokens"]) for s in stats)
    asked = [c for c in record.calls if c.kind == "interactive"]
    interactive = [c.end - c.start for c in asked]
    queued = [c.answer.queue_s / time_scale for c in asked]
    by_kind: dict[str, tuple[int, float]] = {}
    for kind in sorted({p.kind for p in record.programs}):
        spans = [p.end - p.start for p in record.programs if p.kind == kind]
        by_kind[kind] = (len(spans), statistics.fmean(spans))
    return Figures(
        config=config,
        programs_per_min=len(done) / max(span, 1e-9) * 60.0,
        completion_mean=statistics.fmean(times) if times else float("nan"),
        completion_p99=percentile(times, 0.99),
        programs=len(done),
        hit_rates=[float(s["cache_hit_rate"]) for s in stats],
        hit_rate=cached / prompt if prompt else 0.0,
        interactive_p50=percentile(interactive, 0.50),
        interactive_p99=percentile(interactive, 0.99),
        max_queue=max((c.answer.queue_s for c in record.calls), default=0.0) / time_scale,
        errors=len(record.errors),
        by_kind=by_kind,
        interactive_queue_p99=percentile(queued, 0.99),
        interactive_rest_p99=percentile([t - q for t, q in zip(interactive, queued, strict=True)], 0.99),
        interactive_slowest=sorted(
            ((c.start, c.end - c.start, c.answer.queue_s / time_scale) for c in asked), key=lambda x: -x[1]
        )[:3],
        interactive_by_worker={
            w: sum(c.answer.worker == w for c in asked) for w in sorted({c.answer.worker for c in asked})
        },
    )


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank), NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def table(title: str, rows: list[Figures], interactive: bool = False) -> str:
    """One workload's configurations side by side."""
    head = f"{'config':<22}{'progs/min':>10}{'mean s':>9}{'p99 s':>9}{'n':>6}{'hit':>7}  {'hit per worker':<24}"
    if interactive:
        head += f"{'int p50':>9}{'int p99':>9}"
    lines = [title, head]
    for f in rows:
        per = " ".join(f"{h:.2f}" for h in f.hit_rates)
        line = f"{f.config:<22}{f.programs_per_min:>10.1f}{f.completion_mean:>9.2f}{f.completion_p99:>9.2f}"
        line += f"{f.programs:>6}{f.hit_rate:>7.2f}  {per:<24}"
        if interactive:
            line += f"{f.interactive_p50:>9.3f}{f.interactive_p99:>9.3f}"
        if f.errors:
            line += f"  ERRORS {f.errors}"
        lines.append(line)
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    """One of the issue's targets, as a ratio."""

    name: str
    value: float
    goal: float
    higher_is_better: bool = True

    @property
    def met(self) -> bool:
        return self.value >= self.goal if self.higher_is_better else self.value <= self.goal

    def line(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        verdict = "MET" if self.met else "MISSED"
        return f"  {self.name:<62} {self.value:6.2f}x  (target {sign} {self.goal:g}x)  {verdict}"
