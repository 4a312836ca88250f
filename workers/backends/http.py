"""What the HTTP backends share: error wrapping and server-sent events.

httpx errors never leave a backend: :func:`wrap_errors` turns them into the
backend error tree at the boundary, and :func:`raise_for_status` maps HTTP
statuses (4xx: bad request, 503/5xx: unavailable). :func:`probe_health` is the
health rule of every HTTP backend, :func:`streaming` the streaming rule.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from .base import BackendBadRequest, BackendError, BackendTimeout, BackendUnavailable, IncompleteGeneration

DONE = "[DONE]"
#: Seconds a health probe may take before it counts as slow (see :func:`probe_health`).
HEALTH_TIMEOUT = 1.5


def streaming(configured: bool | None, sliced: bool) -> bool:
    """Whether to stream one call: as configured, else (``None``, "auto") only a sliced call.

    Nobody reads a call's partial output, so streaming buys nothing for a
    whole call and costs throughput (one event per token to encode, send and
    parse); worse, some servers cut streamed generations short (llama-cpp-
    python's server interrupts them when another request arrives).
    """
    return sliced if configured is None else configured


async def probe_health(
    client: httpx.AsyncClient,
    path: str,
    *,
    busy: Callable[[], bool],
    ready: tuple[int, ...] = (200,),
    timeout: float = HEALTH_TIMEOUT,
) -> bool:
    """The health rule of the HTTP backends: "can serve", not "answers fast while busy".

    True when ``GET path`` answers with a ``ready`` status. A probe that gets
    no answer within ``timeout`` while the worker is busy is True too
    (``busy()`` is asked when the probe gives up: did calls of this worker run
    while it waited?): servers that run one generation at a time queue the
    probe behind them (llama-cpp-python's ``/v1/models`` waits for the model
    lock), and a backend that is merely busy is not dead. Death shows as a
    refused or reset connection, an error status, or the calls themselves
    failing and timing out. Never raises.
    """
    busy_before = busy()
    try:
        response = await client.get(path, timeout=timeout)
    except httpx.TimeoutException:
        return busy_before or busy()
    except (httpx.HTTPError, BackendError):
        return False
    return response.status_code in ready


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
            raise _stream_error(event["error"])
        yield event


@contextmanager
def stream_breaks(what: str, produced: Callable[[], int]) -> Iterator[None]:
    """Inside a stream whose head arrived: a broken connection means an incomplete generation.

    ``produced`` tells how far the stream got, for the message.
    """
    try:
        yield
    except httpx.HTTPError as exc:
        raise IncompleteGeneration(
            f"{what}: stream broke after {produced()} tokens ({type(exc).__name__}: {exc}); "
            "the output is incomplete and was discarded"
        ) from exc


@contextmanager
def answer_lost(what: str) -> Iterator[None]:
    """Around an unstreamed call: a connection that breaks after the request went out lost the answer.

    A refused connection stays :class:`BackendUnavailable` (nothing ran); a
    server that closed or reset the connection while generating -- killed,
    crashed, restarted -- makes the generation incomplete.
    """
    try:
        yield
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        raise IncompleteGeneration(
            f"{what}: the connection broke while the server was generating ({type(exc).__name__}: {exc}); "
            "the output is incomplete and was discarded"
        ) from exc


def _stream_error(error: Any) -> BackendError:
    # An error event in the middle of a stream: the caller's fault only when the
    # server says so with a 4xx code; anything else cut the generation short.
    message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, int) and 400 <= code < 500:
        return BackendBadRequest(f"stream error: {message}")
    return IncompleteGeneration(f"server error in the middle of a generation: {message}")


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
