"""A batch's results as a download: JSONL or CSV, streamed page by page like ``aiosd batch results``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from aiosd.daemon.access.authorizer import PolicyLookup
from aiosd.daemon.admin.batches import RESULT_COLUMNS, BatchAdmin, result_row
from aiosd.daemon.admin.web.console import Console
from aiosd.daemon.store import Doc

MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


def result_lines(rows: Iterator[Doc], fmt: str) -> Iterator[str]:
    """The exported rows as text lines (the same columns and encoding as ``aiosd batch results``)."""
    if fmt == "csv":
        yield _csv_line(dict(zip(RESULT_COLUMNS, RESULT_COLUMNS, strict=True)))
    for task in rows:
        row = result_row(task)
        if fmt == "csv":
            yield _csv_line({**row, "output": json.dumps(row["output"], default=str)})
        else:
            yield json.dumps(row, default=str) + "\n"


def _csv_line(row: Doc) -> str:
    buffer = io.StringIO()
    csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS).writerow(row)
    return buffer.getvalue()


def results(console: Console, request: Request) -> Response:
    """``GET /batches/<id>/results.<jsonl|csv>[?failed=1]``: every task's result in line order."""
    fmt = str(request.path_params["fmt"])
    batch_id = str(request.path_params["batch_id"])
    if fmt not in MEDIA_TYPES:
        raise HTTPException(404, "results come as .jsonl or .csv")
    if console.observer.tasks.batch(batch_id) is None:
        raise HTTPException(404, "no such batch")
    failed = request.query_params.get("failed") == "1"
    admin = BatchAdmin(console.observer.tasks, PolicyLookup(console.observer.directory))
    name = f"{batch_id}{'-failed' if failed else ''}.{fmt}"
    return StreamingResponse(
        result_lines(admin.results(batch_id, failed), fmt),
        media_type=MEDIA_TYPES[fmt],
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )
