"""Chart geometry for the console's inline SVG: computed here, drawn by the templates.

Charts are plain SVG in the page (no JavaScript library, nothing fetched at
run time): a bar chart of tasks finished per time bucket, and sparklines of
a worker's load. These functions only do arithmetic, so they are tested
without a browser.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

#: Bucket widths in seconds a throughput chart picks from (the smallest giving at most ``max_buckets``).
STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
WIDTH, HEIGHT = 640, 180
#: Room for the axis labels: left, bottom.
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 44, 22, 8


def buckets(times: Iterable[datetime], start: datetime, end: datetime, max_buckets: int = 60) -> tuple[int, list[int]]:
    """Count ``times`` per bucket from ``start`` to ``end``: ``(bucket seconds, counts)``."""
    span = max((end - start).total_seconds(), 1.0)
    step = next((s for s in STEPS if span / s <= max_buckets), STEPS[-1])
    counts = [0] * (int(span // step) + 1)
    for t in times:
        index = int((t - start).total_seconds() // step)
        counts[min(max(index, 0), len(counts) - 1)] += 1
    return step, counts


def bar_chart(counts: Sequence[int], start: datetime, step: int, unit: str = "tasks") -> dict[str, Any]:
    """Bars, axis labels and a title for ``counts`` per ``step`` seconds from ``start``."""
    top = max(counts, default=0) or 1
    inner_w, inner_h = WIDTH - PAD_LEFT, HEIGHT - PAD_BOTTOM - PAD_TOP
    slot = inner_w / max(len(counts), 1)
    bars = []
    for i, n in enumerate(counts):
        h = inner_h * n / top
        bars.append(
            {
                "x": round(PAD_LEFT + i * slot + slot * 0.1, 1),
                "y": round(PAD_TOP + inner_h - h, 1),
                "w": round(max(slot * 0.8, 1.0), 1),
                "h": round(h, 1),
                "n": n,
                "at": (start + timedelta(seconds=i * step)).strftime("%H:%M:%S"),
            }
        )
    end = start + timedelta(seconds=len(counts) * step)
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "left": PAD_LEFT,
        "base": HEIGHT - PAD_BOTTOM,
        "top_y": PAD_TOP,
        "bars": bars,
        "max": top,
        "title": f"{unit} finished per {step}s",
        "start": start.strftime("%H:%M:%S"),
        "end": end.strftime("%H:%M:%S"),
    }


def sparkline(
    samples: Sequence[tuple[float, float]], now: float, window: float, width: int = 240, height: int = 36
) -> str:
    """SVG polyline points for ``(unix time, value in 0..1)`` samples over the last ``window`` seconds."""
    points = []
    for t, value in samples:
        if t < now - window:
            continue
        x = width * (1 - (now - t) / window)
        y = height - 2 - (height - 4) * min(max(value, 0.0), 1.0)
        points.append(f"{x:.1f},{y:.1f}")
    return " ".join(points)
