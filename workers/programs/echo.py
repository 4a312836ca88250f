"""``echo``: returns its input, after storing it as ``notes`` memory notes (0 by default).

The cheapest program there is: for smoke tests, benchmarks of the task path,
and as the smallest example of a program. Input: any JSON, or
``{"value": ..., "notes": N}`` to make N ``memory.add`` calls first.
"""

from __future__ import annotations

import json
from typing import Any

from aiosd.sdk.programs import ProgramContext


def echo(ctx: ProgramContext) -> dict[str, Any]:
    """Return ``ctx.input`` (as ``{"echo": input, "notes": [ids]}``)."""
    value = ctx.input
    count = 0
    if isinstance(value, dict) and isinstance(value.get("notes"), int):
        count = max(0, min(value["notes"], 100))
    text = json.dumps(value, sort_keys=True)[:2000]
    notes = [ctx.remember(f"echo {i + 1}/{count}: {text}", tags=["echo"]) for i in range(count)]
    return {"echo": value, "notes": notes}
