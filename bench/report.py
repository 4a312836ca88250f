"""Printing the figures: one table per phase, the targets with PASS/MISS, and the JSON dump."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from load import Run

#: Process columns, in this order when present.
PROCESSES = ("client", "rabbitmq", "database", "scheduler", "worker", "echo", "standin")


def table(title: str, runs: list[Run], note: str = "") -> str:
    """The runs of one phase: rate, latency and CPU ms per call of each process."""
    procs = [p for p in PROCESSES if any(p in r.cpu for r in runs)]
    procs += sorted({p for r in runs for p in r.cpu} - set(procs))
    width = max([len(r.label) for r in runs] + [12])
    head = f"{'':{width}}  {'conc':>4} {'calls':>6} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8} |"
    head += "".join(f" {p[:9]:>9}" for p in procs) + f" {'total':>7} {'(others)':>9}"
    bar = head.index("|")
    lines = [f"== {title}" + (f"  ({note})" if note else ""), f"{'':{bar}}| CPU ms per call", head]
    for r in runs:
        row = f"{r.label:{width}}  {r.concurrency:>4} {r.calls:>6} {r.throughput:>8.0f} {r.p50:>8.2f} {r.p99:>8.2f} |"
        row += "".join(f" {r.cpu[p]:>9.3f}" if p in r.cpu else f" {'-':>9}" for p in procs)
        row += f" {r.cpu_total:>7.3f} {f'({r.others:.2f})':>9}"
        if r.errors:
            row += f"   {r.errors} FAILED, first: {r.first_error[:120]}"
        lines.append(row)
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    """One of issue 9's targets: a measured figure against its bound."""

    name: str
    shown: str  # how the figure was computed, e.g. "412/s / 2400/s"
    value: float
    bound: float
    at_least: bool  # True: value >= bound passes; False: value <= bound passes
    unit: str = "x"

    @property
    def passed(self) -> bool:
        return self.value >= self.bound if self.at_least else self.value <= self.bound

    def line(self) -> str:
        op = ">=" if self.at_least else "<="
        figure = f"{self.value:.2f}{self.unit}"
        verdict = "PASS" if self.passed else "MISS"
        return f"  {verdict}  {self.name:<52} {figure:>9}  (target {op} {self.bound:g}{self.unit})  {self.shown}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": round(self.value, 4),
            "bound": self.bound,
            "op": ">=" if self.at_least else "<=",
            "unit": self.unit,
            "passed": self.passed,
            "shown": self.shown,
        }


def targets(items: list[Target]) -> str:
    """The targets block."""
    if not items:
        return "== targets: none measurable with the phases run"
    return "\n".join(["== targets (issue 9)", *(t.line() for t in items)])


def write_json(path: Path, meta: dict[str, Any], phases: dict[str, list[Run]], items: list[Target]) -> None:
    """Every figure of the run as JSON."""
    data = {
        **meta,
        "phases": {name: [r.as_dict() for r in runs] for name, runs in phases.items()},
        "targets": [t.as_dict() for t in items],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
