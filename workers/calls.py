"""One leased call: the lease's ``llm.chat`` arguments in, exactly one :class:`Outcome` out.

:func:`run_lease` never raises for a failed call: every failure becomes an
``error`` outcome whose code and ``retryable`` flag tell the scheduler what to
do. Only cancellation (a stopping worker handing the lease back) escapes.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError

from aiosd.sdk.cluster import Lease, Outcome, Snapshot
from aiosd.sdk.llm import ChatMessage, LlmChatArgs
from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.protocol import ErrorCode, Usage, describe_validation

from .backends.base import (
    Backend,
    BackendBadRequest,
    BackendTimeout,
    BackendUnavailable,
    ChatRequest,
    ChatResult,
    Message,
    OutputInvalid,
    Resume,
    ToolCall,
)

log = get_logger(__name__)

#: How much of an invalid output an error message quotes.
QUOTE_CHARS = 200


def chat_request(lease: Lease) -> ChatRequest:
    """The backend request for ``lease``; :class:`BackendBadRequest` if its args are invalid."""
    try:
        args = LlmChatArgs.model_validate(lease.args)
        resume = lease.resume
        return ChatRequest(
            messages=tuple(_message(m) for m in args.messages),
            model=args.model,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            stop=tuple(args.stop),
            seed=args.seed,
            response_format=args.response_format,
            tools=tuple(args.tools),
            resume=Resume(token_ids=tuple(resume.token_ids), text=resume.text) if resume else None,
        )
    except ValidationError as exc:
        raise BackendBadRequest(f"invalid llm.chat arguments: {describe_validation(exc)}") from exc


def _message(m: ChatMessage) -> Message:
    calls = tuple(ToolCall.model_validate(c) for c in m.tool_calls or ())
    return Message(role=m.role, content=m.content, name=m.name, tool_call_id=m.tool_call_id, tool_calls=calls)


async def run_lease(backend: Backend, lease: Lease, worker_id: str, model: str) -> Outcome:
    """Run ``lease`` on ``backend`` (one slice of it when ``slice_tokens`` is set)."""
    base: dict[str, Any] = {"worker_id": worker_id, "lease_id": lease.lease_id, "key": lease.key, "model": model}
    started = time.monotonic()
    try:
        result = await backend.chat(chat_request(lease), slice_tokens=lease.slice_tokens)
    except Exception as exc:  # every failure is reported, none kills the worker
        return error_outcome(base, exc, _ms_since(started))
    return result_outcome(base, result, _ms_since(started))


def result_outcome(base: dict[str, Any], result: ChatResult, run_ms: float) -> Outcome:
    """``done`` for a finished call, ``slice`` (with the snapshot) for a preempted one."""
    usage = Usage.model_validate(result.usage.model_dump())
    if result.finish_reason == "slice":
        snapshot = Snapshot(token_ids=list(result.token_ids or ()), text=result.text)
        return Outcome(**base, status="slice", snapshot=snapshot, usage=usage, run_ms=run_ms)
    return Outcome(
        **{**base, "model": result.model or base["model"]},
        status="done",
        text=result.text,
        finish_reason=result.finish_reason,
        tool_calls=[call.model_dump() for call in result.tool_calls],
        usage=usage,
        run_ms=run_ms,
    )


def error_outcome(base: dict[str, Any], exc: Exception, run_ms: float) -> Outcome:
    """The ``error`` outcome for a failed call; see :func:`classify`."""
    code, retryable, message = classify(exc)
    log_method = log.error if code is ErrorCode.INTERNAL else log.warning
    log_method(
        "call_failed",
        lease_id=base["lease_id"],
        key=base["key"],
        code=code.value,
        error=message,
        exc_info=code is ErrorCode.INTERNAL,
    )
    return Outcome(**base, status="error", error_code=code, error_message=message, retryable=retryable, run_ms=run_ms)


def classify(exc: Exception) -> tuple[ErrorCode, bool, str]:
    """Error code, whether another attempt could succeed, and the message for the caller.

    Bad requests and outputs that miss the requested format are the caller's
    to fix (a retry would repeat them); an unavailable or slow backend is
    worth another attempt, likely on another worker; anything else is a bug.
    """
    if isinstance(exc, OutputInvalid):
        quoted = exc.text[:QUOTE_CHARS] + ("..." if len(exc.text) > QUOTE_CHARS else "")
        return ErrorCode.INVALID_ARGS, False, f"{exc} (model output: {quoted!r})"
    if isinstance(exc, BackendBadRequest):
        return ErrorCode.INVALID_ARGS, False, str(exc)
    if isinstance(exc, BackendUnavailable | BackendTimeout):
        return ErrorCode.UNAVAILABLE, True, str(exc) or type(exc).__name__
    return ErrorCode.INTERNAL, False, f"worker error: {type(exc).__name__}: {exc}"


def released_outcome(lease: Lease, worker_id: str, reason: str) -> Outcome:
    """Hand ``lease`` back unfinished (the worker is stopping)."""
    return Outcome(worker_id=worker_id, lease_id=lease.lease_id, key=lease.key, status="released", error_message=reason)


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000.0, 3)
