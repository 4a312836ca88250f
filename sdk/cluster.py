"""Messages between the scheduler and its workers (LLM workers and tool runners).

The scheduler publishes a :class:`Lease` (or a :class:`Revoke` of leases it
takes back) to exchange :data:`WORKER_EXCHANGE` with the worker's id as
routing key; the worker consumes it from its own queue (:func:`worker_queue`).
Workers publish :class:`Heartbeat`, :class:`Outcome` and :class:`Goodbye`
events to the durable :data:`EVENTS_QUEUE` (through the default exchange)
with publisher confirms. All bodies are JSON.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .errors import ProtocolError
from .protocol import ErrorCode, Usage, describe_validation

WORKER_EXCHANGE = "aiosd.workers"
EVENTS_QUEUE = "aiosd.events"
WORKER_QUEUE_PREFIX = "aiosd.worker."


def worker_queue(worker_id: str) -> str:
    """The queue a worker takes its leases from."""
    return f"{WORKER_QUEUE_PREFIX}{worker_id}"


#: The collection where the scheduler keeps each worker's last heartbeat (``aiosd worker --check`` reads it).
WORKERS_COLLECTION = "workers"
#: One document per scheduler process, refreshed every few seconds (``aiosd status`` reads it).
SCHEDULERS_COLLECTION = "schedulers"
#: One document per task runner, refreshed by its heartbeats.
RUNNERS_COLLECTION = "runners"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Snapshot(_Frozen):
    """A time-sliced generation's output so far (AIOS's context snapshot)."""

    token_ids: list[int] = Field(default_factory=list)
    text: str = ""


WorkerKind = Literal["llm", "tools"]


class Lease(_Frozen):
    """One syscall leased to a worker until ``expires_at`` (extended by heartbeats)."""

    lease_id: str
    key: str = Field(description="The syscall record's key (<agent>/<message_id>).")
    agent: str
    call_id: str
    syscall: str = "llm.chat"
    args: dict[str, Any] = Field(description="The syscall's arguments.")
    resume: Snapshot | None = None
    slice_tokens: int | None = Field(default=None, description="Generate at most this many tokens, then yield.")
    attempt: int = 1
    expires_at: datetime


class Revoke(_Frozen):
    """Leases the scheduler takes back before they finish: the worker stops those calls and reports each
    ``released`` (unknown or finished leases are ignored), so they run again elsewhere."""

    kind: Literal["revoke"] = "revoke"
    lease_ids: list[str]
    reason: str = ""


class WorkerState(_Frozen):
    """What a worker reports about itself in every heartbeat."""

    worker_id: str
    kind: WorkerKind = "llm"
    host: str
    backend: str
    model: str
    context_length: int = 0
    capacity: int = Field(ge=1)
    leases: list[str] = Field(default_factory=list, description="Ids of the leases it holds.")
    healthy: bool = True
    draining: bool = Field(default=False, description="Stopping: takes no new leases.")
    metrics: dict[str, float] = Field(default_factory=dict)


class Heartbeat(_Frozen):
    """Periodic liveness and load report; the first one registers the worker."""

    kind: Literal["heartbeat"] = "heartbeat"
    worker: WorkerState


class Goodbye(_Frozen):
    """The worker is exiting; everything it held was reported or released."""

    kind: Literal["goodbye"] = "goodbye"
    worker_id: str


class Outcome(_Frozen):
    """The end of one lease.

    ``done``: the call finished. ``slice``: the time slice ran out; ``snapshot``
    holds the output so far and the call goes back to the queue. ``error``: the
    call failed (``retryable`` asks for another attempt). ``released``: handed
    back unstarted or unfinished by a stopping worker.
    """

    kind: Literal["outcome"] = "outcome"
    worker_id: str
    lease_id: str
    key: str
    status: Literal["done", "slice", "error", "released"]
    result: dict[str, Any] | None = Field(default=None, description="Result of a non-LLM syscall (tools).")
    text: str = ""
    snapshot: Snapshot | None = None
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    model: str = ""
    run_ms: float = 0.0
    error_code: ErrorCode | None = None
    error_message: str | None = None
    retryable: bool = False


Event = Annotated[Heartbeat | Goodbye | Outcome, Field(discriminator="kind")]
_EVENT: TypeAdapter[Heartbeat | Goodbye | Outcome] = TypeAdapter(Event)


def decode_event(body: bytes) -> Heartbeat | Goodbye | Outcome:
    """Parse an event body; raise :class:`ProtocolError` if it is not one."""
    try:
        return _EVENT.validate_python(json.loads(body))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"event is not JSON: {exc}") from exc
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, describe_validation(exc)) from exc


def decode_order(body: bytes) -> Lease | Revoke:
    """Parse what the scheduler sends a worker (a lease or a revoke); raise :class:`ProtocolError` if neither."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"order is not JSON: {exc}") from exc
    try:
        if isinstance(data, dict) and data.get("kind") == "revoke":
            return Revoke.model_validate(data)
        return Lease.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, describe_validation(exc)) from exc
