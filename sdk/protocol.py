"""Wire protocol v1: the one definition of every message aiosd exchanges.

Everything that crosses RabbitMQ is JSON (UTF-8) with ``content_type``
``application/json``. Agents publish a :class:`Request` to the ingress exchange
and receive a :class:`Reply` on the queue named in ``reply_to``. The AMQP
properties carry the envelope's identity; the body carries the call.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ProtocolError
from .tasks import TaskBinding

PROTOCOL_VERSION = 1
CONTENT_TYPE = "application/json"
#: AMQP header carrying the protocol version of a message.
VERSION_HEADER = "aiosd-protocol"

#: Topic exchange agents publish to; the routing key is the syscall name.
INGRESS_EXCHANGE = "aiosd.ingress"
#: Priority queue the scheduler consumes, bound to the ingress exchange with ``#``.
INGRESS_QUEUE = "aiosd.syscalls"
#: Fanout exchange and queue for messages the scheduler could not accept.
DEAD_LETTER_EXCHANGE = "aiosd.dead"
DEAD_LETTER_QUEUE = "aiosd.dead"
#: Headers set on a dead-lettered message to say why it was refused.
DEAD_CODE_HEADER = "x-aiosd-error-code"
DEAD_REASON_HEADER = "x-aiosd-error-reason"
#: On a dead-lettered copy: the broker user that published the original (the copy has no ``user_id``).
DEAD_AGENT_HEADER = "x-aiosd-agent"
#: Reply queues are named ``aiosd.reply.<agent>.<anything>``; brokers grant an
#: agent only queues under its own prefix.
REPLY_QUEUE_PREFIX = "aiosd.reply."

MAX_PRIORITY = 9
MAX_MESSAGE_ID_LENGTH = 128
#: Deepest nesting of objects and arrays a message body may have (the body itself is level 1).
MAX_JSON_DEPTH = 32
#: Integers must fit in 64 bits (what MongoDB stores); NaN and Infinity are not JSON.
MIN_INT, MAX_INT = -(2**63), 2**63 - 1


def reply_queue_prefix(agent: str) -> str:
    """Return the prefix every reply queue of ``agent`` must start with."""
    return f"{REPLY_QUEUE_PREFIX}{agent}."


class Status(str, Enum):
    """Outcome of a syscall as seen by the agent."""

    OK = "ok"
    ERROR = "error"
    DENIED = "denied"
    PENDING = "pending"  # interim: the call waits for a human approval; the final reply follows


class ErrorCode(str, Enum):
    """Machine-readable error codes carried in :class:`ErrorInfo`."""

    MALFORMED = "malformed"  # body is not JSON / not an object
    INVALID_REQUEST = "invalid_request"  # envelope or AMQP properties are wrong
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_SYSCALL = "unknown_syscall"
    INVALID_ARGS = "invalid_args"
    TOO_LARGE = "too_large"
    UNAUTHENTICATED = "unauthenticated"  # no broker-proven identity
    DENIED = "denied"
    QUOTA_EXCEEDED = "quota_exceeded"  # a token, request or storage quota is used up
    RATE_LIMITED = "rate_limited"  # too many requests in the policy's rate window
    APPROVAL_PENDING = "approval_pending"  # interim: waiting for a human approval
    APPROVAL_DENIED = "approval_denied"  # a human denied the call, or nobody decided in time
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    TIME_LIMIT_EXCEEDED = "time_limit_exceeded"  # a tool ran past its timeout (or CPU time) and was killed
    RESOURCE_LIMIT_EXCEEDED = "resource_limit_exceeded"  # a tool hit its memory or file-size limit
    TOOL_FAILED = "tool_failed"  # the tool raised an error or its process died
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"  # client-side: no reply in time
    INTERNAL = "internal"
    REPLAY_DIVERGED = "replay_diverged"  # a task's re-run made a different call than the stored one


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Request(_Frozen):
    """Body of a syscall message published to :data:`INGRESS_EXCHANGE`."""

    v: int = Field(default=PROTOCOL_VERSION, description="Protocol version; must be 1.")
    syscall: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$",
        description="Syscall name, e.g. 'memory.add'.",
    )
    args: dict[str, Any] = Field(default_factory=dict, description="Syscall arguments.")
    session: str | None = Field(default=None, max_length=128, description="Conversation/session id, if any.")
    program: str | None = Field(default=None, max_length=128, description="Groups the calls of one agent run.")
    deadline: datetime | None = Field(
        default=None,
        description="Absolute UTC time after which the call must not start (RFC 3339).",
    )
    task: TaskBinding | None = Field(
        default=None,
        description="Runners only: the task (and the lease on it) this call is made for; it runs as the task's agent.",
    )

    @field_validator("deadline")
    @classmethod
    def _zoned(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.utcoffset() is None:
            raise ValueError("deadline needs a time zone (RFC 3339, e.g. 2026-01-01T12:00:00Z)")
        return value


class ErrorInfo(_Frozen):
    """Why a syscall did not succeed."""

    code: ErrorCode
    message: str


class Usage(_Frozen):
    """Resources a syscall consumed."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def plus(self, other: Usage) -> Usage:
        """The sum of two usages."""
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
        )


class Timings(_Frozen):
    """Where the time of a syscall went, in milliseconds."""

    queue_ms: float = Field(default=0.0, description="From the scheduler receiving the call to the start of work.")
    run_ms: float = Field(default=0.0, description="Time spent doing the work.")


class Reply(_Frozen):
    """Body of the message the scheduler publishes to a request's ``reply_to``."""

    v: int = PROTOCOL_VERSION
    id: str = Field(description="The request's message_id: the syscall id.")
    syscall: str | None = Field(default=None, description="Name of the syscall answered.")
    status: Status
    result: Any = Field(default=None, description="Syscall-specific result when status is ok.")
    error: ErrorInfo | None = None
    usage: Usage = Field(default_factory=Usage)
    timings: Timings = Field(default_factory=Timings)

    @classmethod
    def ok(cls, id: str, syscall: str, result: Any, **extra: Any) -> Reply:
        """Build a successful reply."""
        return cls(id=id, syscall=syscall, status=Status.OK, result=result, **extra)

    @classmethod
    def failure(
        cls,
        id: str,
        syscall: str | None,
        code: ErrorCode,
        message: str,
        status: Status = Status.ERROR,
        **extra: Any,
    ) -> Reply:
        """Build an error (or denied) reply."""
        error = ErrorInfo(code=code, message=message)
        return cls(id=id, syscall=syscall, status=status, error=error, **extra)


def encode(model: BaseModel) -> bytes:
    """Serialize a protocol message to its wire form (compact UTF-8 JSON)."""
    return model.model_dump_json(exclude_none=False).encode("utf-8")


def decode_request(body: bytes) -> Request:
    """Parse a request body; raise :class:`ProtocolError` with the right code."""
    data = _load_object(body)
    version = data.get("v", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol version {version!r} is not supported (this server speaks {PROTOCOL_VERSION})",
        )
    try:
        return Request.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, describe_validation(exc)) from exc


def decode_reply(body: bytes) -> Reply:
    """Parse a reply body."""
    try:
        return Reply.model_validate(_load_object(body))
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.MALFORMED, describe_validation(exc)) from exc


def decode_json_object(body: bytes) -> dict[str, Any]:
    """Parse a JSON object that must be storable (no NaN, no huge integers, not too deep), or raise
    :class:`ProtocolError` (``malformed``): the rules every request body follows."""
    return _load_object(body)


def _load_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"body is not valid UTF-8 JSON: {exc}") from exc
    except RecursionError as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"body nests deeper than {MAX_JSON_DEPTH} levels") from exc
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.MALFORMED, "body must be a JSON object")
    if (problem := storable_problem(data)) is not None:
        raise ProtocolError(ErrorCode.MALFORMED, problem)
    return data


def _no_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not a JSON number", name, 0)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise json.JSONDecodeError(f"{text[:24]} is out of range for a 64-bit float", text, 0)
    return value


def storable_problem(value: Any) -> str | None:
    """Why ``value`` (decoded JSON) cannot be stored and read back, or ``None``.

    Too deep (more than :data:`MAX_JSON_DEPTH` levels) or an integer outside
    64 bits: a database would refuse it, or store it and fail to read it back.
    Iterative, so a hostile body cannot exhaust the stack.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                return f"body nests deeper than {MAX_JSON_DEPTH} levels"
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, int) and not isinstance(item, bool) and not MIN_INT <= item <= MAX_INT:
            return f"integer {str(item)[:24]}... does not fit in 64 bits"
    return None


def describe_validation(exc: ValidationError) -> str:
    """Turn a pydantic error into one human sentence naming each bad field."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def utcnow() -> datetime:
    """Timezone-aware current UTC time."""
    return datetime.now(UTC)
