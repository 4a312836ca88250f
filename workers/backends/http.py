"""What the HTTP backends share: error wrapping and server-sent events.

httpx errors never leave a backend: :func:`wrap_errors` turns them into the
backend error tree at the boundary, and :func:`raise_for_status` maps HTTP
statuses (4xx: bad request, 503/5xx: unavailable).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from .base import BackendBadRequest, BackendError, BackendTimeout, BackendUnavailable

DONE = "[DONE]"


@contextmanager
def wrap_errors(what: str) -> Iterator[None]:
    """Re-raise httpx and decoding errors as :class:`BackendError` subclasses."""
    try:
        yield
    except BackendError:
        raise
    except httpx.TimeoutException as exc:
        raise BackendTimeout(f"{what}: timed out ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise BackendUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendError(f"{what}: unexpected response: {exc}") from exc


async def raise_for_status(response: httpx.Response, what: str) -> None:
    """Map a non-2xx response to the error tree, with the server's message."""
    if response.is_success:
        return
    body = (await response.aread()).decode("utf-8", "replace")[:500]
    message = f"{what}: HTTP {response.status_code}: {body}"
    if response.status_code in (400, 404, 413, 422):
        raise BackendBadRequest(message)
    if response.status_code in (408, 504):
        raise BackendTimeout(message)
    raise BackendUnavailable(message)


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Yield the JSON payload of each ``data:`` line until ``data: [DONE]``.

    Comments, ``event:``/``id:`` fields and blank separators are skipped; a
    payload carrying ``{"error": ...}`` becomes a :class:`BackendError`.
    """
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == DONE:
            return
        if not data:
            continue
        event = json.loads(data)
        if isinstance(event, dict) and event.get("error"):
            raise BackendBadRequest(f"stream error: {_error_message(event['error'])}")
        yield event


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error)


def parse_prometheus(text: str, prefix: str) -> dict[str, float]:
    """Sum Prometheus samples whose name starts with ``prefix`` over their labels.

    ``sglang:num_running_reqs{model_name="m"} 3`` becomes
    ``{"num_running_reqs": 3.0}``; histogram/summary parts are skipped.
    """
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        if "{" in line:
            # Label values may contain spaces: the value follows the closing brace.
            name, _, tail = line.partition("{")
            rest = tail.rpartition("}")[2]
        else:
            name, _, rest = line.partition(" ")
        name = name[len(prefix) :]
        if name.endswith(("_bucket", "_sum", "_count", "_created")):
            continue
        try:
            value = float(rest.split()[0])
        except (ValueError, IndexError):
            continue
        values[name] = values.get(name, 0.0) + value
    return values
