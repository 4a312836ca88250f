"""Tools for aiosd's tests only, installed by putting tests/toolpkg on PYTHONPATH.

The directory holds a ``*.dist-info`` with an ``aiosd.tools`` entry point for
each, so they are found exactly like a real tool package's.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from aiosd.sdk.toolkit import Tool, ToolContext

MIB = 1024 * 1024


def _sleep(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    started = time.monotonic()
    time.sleep(args["seconds"])
    return {"slept": round(time.monotonic() - started, 3), "pid": os.getpid()}


def _spin(args: dict[str, Any], ctx: ToolContext) -> None:
    if "pidfile" in args:  # a grandchild, to show the whole process group is killed
        sleeper = subprocess.Popen(["sleep", "600"])
        Path(args["pidfile"]).write_text(str(sleeper.pid))
    while True:
        pass


def _hog(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    chunks = [bytearray(16 * MIB) for _ in range(args["mb"] // 16)]
    return {"allocated_mb": 16 * len(chunks)}


def _marker(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    Path(args["marker"]).write_text(str(args["count"]))
    Path("scratch.txt").write_text("left behind on purpose")
    return {"cwd": os.getcwd(), "env": sorted(os.environ), "agent": ctx.agent, "time_left": ctx.time_left()}


def _launch(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    time.sleep(args.get("seconds", 0))
    Path(args["marker"]).write_text("launched")
    return {"launched": True}


def _crash(args: dict[str, Any], ctx: ToolContext) -> Any:
    if args["how"] == "raise":
        raise RuntimeError("the tool broke")
    if args["how"] == "exit":
        os._exit(3)
    if args["how"] == "print":
        print("noise on stdout must not confuse the protocol")
        return {"printed": True}
    return {"not": "json", "set": {1, 2}}


def _object(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


SLEEP = Tool(
    "test_sleep",
    "Sleep for a while.",
    _object({"seconds": {"type": "number", "minimum": 0, "maximum": 30}}, "seconds"),
    _sleep,
    timeout=10,
    max_timeout=60,
)
SPIN = Tool("test_spin", "Loop forever.", _object({"pidfile": {"type": "string"}}), _spin, timeout=1, max_timeout=5)
HOG = Tool(
    "test_hog",
    "Allocate memory.",
    _object({"mb": {"type": "integer", "minimum": 16}}, "mb"),
    _hog,
    timeout=20,
    max_timeout=30,
)
MARKER = Tool(
    "test_marker",
    "Write a marker file.",
    _object({"marker": {"type": "string"}, "count": {"type": "integer", "minimum": 1}}, "marker", "count"),
    _marker,
)
LAUNCH = Tool(
    "test_launch",
    "Launch the rocket (cannot be undone).",
    _object({"marker": {"type": "string"}, "seconds": {"type": "number", "minimum": 0}}, "marker"),
    _launch,
    irreversible=True,
)
CRASH = Tool(
    "test_crash",
    "Fail in various ways.",
    _object({"how": {"enum": ["raise", "exit", "print", "unjson"]}}, "how"),
    _crash,
)


def steps(ctx: Any) -> dict[str, Any]:
    """A test program: ``input["steps"]`` short LLM calls in a row, then a note; returns their texts."""
    count = int(ctx.input.get("steps", 3))
    texts = []
    for i in range(count):
        messages = [{"role": "user", "content": f"Step {i + 1}: say one word."}]
        texts.append(ctx.chat(messages, max_tokens=int(ctx.input.get("max_tokens", 8)), temperature=0.0))
    note = ctx.remember(f"finished {count} steps", tags=["steps"])
    return {"texts": texts, "note": note}
