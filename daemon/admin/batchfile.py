"""The JSONL file of a batch: one task per line, read as a stream (never the whole file at once).

Each non-blank line is a JSON object::

    {"input": <any JSON: the program's input>, "priority": 0-9 (optional), "key": "<your label>" (optional)}

``key`` is echoed in the results, so a line's result can be matched to the
caller's own records. Blank lines are skipped; every other line must be valid.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aiosd.daemon.pipeline.intake import unstorable_key
from aiosd.sdk.errors import ProtocolError
from aiosd.sdk.protocol import decode_json_object, describe_validation

#: Bytes of one line (one task's input); a longer line is invalid.
MAX_LINE_BYTES = 1_048_576


class BatchLine(BaseModel):
    """One line of a batch file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: Any
    priority: int | None = Field(default=None, ge=0, le=9)
    key: str | None = Field(default=None, max_length=256)


@dataclass(frozen=True)
class Line:
    """A line of the file: its number, and the task or why it is invalid."""

    number: int
    task: BatchLine | None
    problem: str | None = None


def read_lines(path: Path) -> Iterator[Line]:
    """Every non-blank line of ``path``, validated, in order."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            yield _parse(number, raw)


def _parse(number: int, raw: bytes) -> Line:
    if len(raw) > MAX_LINE_BYTES:
        return Line(number, None, f"the line is {len(raw)} bytes; the limit is {MAX_LINE_BYTES}")
    try:
        data = decode_json_object(raw)
    except ProtocolError as exc:
        return Line(number, None, exc.message)
    try:
        task = BatchLine.model_validate(data)
    except ValidationError as exc:
        return Line(number, None, describe_validation(exc))
    if "input" not in data:
        return Line(number, None, "the line has no 'input'")
    if (bad := unstorable_key(task.input, "input")) is not None:
        return Line(number, None, f"key {bad!r} may not start with '$' or contain '.' or NUL")
    return Line(number, task)
