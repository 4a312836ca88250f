"""The one small interface every LLM backend implements, and its data types.

A worker drives a backend only through :class:`Backend`: ``start``/``close``
around its life, ``health``/``info``/``metrics`` for heartbeats and
``chat`` for the calls it leases.

Time slicing (AIOS's context switch): ``chat(request, slice_tokens=N)``
generates at most ``N`` new tokens. When the slice, not ``max_tokens`` nor a
stop, ended the call, the result's ``finish_reason`` is ``"slice"`` and
:meth:`ChatResult.resume` is the snapshot to store; calling ``chat`` again
with ``request.resume`` set to it continues where the slice stopped. Backends
that continue from *token ids* (prompt ids + generated ids) rather than from
re-tokenized text make greedy decoding exact: a sliced generation equals the
unsliced one token for token.

Conventions of :class:`ChatResult`: ``text`` and ``token_ids`` are
*cumulative* (the whole generation so far, resumed part included), so the next
snapshot is simply ``result.resume()``; ``usage`` counts only the work of this
call, so that summing the usage of all slices gives the cost of the call.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aiosd.sdk.errors import AiosdError

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "slice", "tool_calls"]
ResponseFormat = Literal["text", "json"] | dict[str, Any]


# -- errors --------------------------------------------------------------------


class BackendError(AiosdError):
    """Base of every error a backend raises; library errors are wrapped in one."""


class BackendUnavailable(BackendError):
    """The backend cannot serve now (not started, server down, starting up)."""


class BackendBadRequest(BackendError):
    """The request cannot be served as given (too long, bad schema, ...)."""


class BackendTimeout(BackendError):
    """The backend did not answer in time."""


class IncompleteGeneration(BackendUnavailable):
    """A generation ended without the backend saying why: never a result.

    A stream that closed early, a connection dropped or a server error in the
    middle of a generation leave an unknown part of the answer missing. The
    attempt failed and is worth another one (it is retryable, like any
    :class:`BackendUnavailable`); the partial text is never reported.
    """


class OutputInvalid(BackendError):
    """The model's output does not satisfy the requested format.

    ``text`` holds the raw output so the caller can log or return it.
    """

    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text


# -- request -------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FunctionCall(_Frozen):
    """The function part of an OpenAI-style tool call; ``arguments`` is JSON text."""

    name: str
    arguments: str = "{}"


class ToolCall(_Frozen):
    """An OpenAI-style tool call (``{"id", "type": "function", "function"}``)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Frozen):
    """One chat message, OpenAI-style."""

    role: Role
    content: str | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The message as a plain dict for chat templates and HTTP bodies."""
        data = self.model_dump(exclude_none=True, exclude_defaults=True)
        data["role"] = self.role
        data["content"] = self.content or ""
        return data


class Resume(_Frozen):
    """Snapshot of a sliced generation: everything generated so far."""

    token_ids: tuple[int, ...] = ()
    text: str = ""


class ChatRequest(_Frozen):
    """One ``llm.chat`` call as a backend sees it."""

    messages: tuple[Message, ...] = Field(min_length=1)
    model: str | None = None
    max_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    response_format: ResponseFormat = "text"
    tools: tuple[dict[str, Any], ...] = ()
    resume: Resume | None = None

    @field_validator("tools")
    @classmethod
    def _check_tools(cls, tools: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        for tool in tools:
            function = tool.get("function")
            if tool.get("type") != "function" or not isinstance(function, dict) or not function.get("name"):
                raise ValueError('each tool must be {"type": "function", "function": {"name": ...}}')
        return tools

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in stop):
            raise ValueError("stop strings must not be empty")
        return stop

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The JSON Schema the output must follow, when one was given."""
        return self.response_format if isinstance(self.response_format, dict) else None

    @property
    def wants_json(self) -> bool:
        """Whether the output must be a JSON document."""
        return self.response_format != "text"

    @property
    def greedy(self) -> bool:
        """Greedy decoding: the only mode in which slicing is exactly reproducible."""
        return self.temperature == 0.0

    @property
    def resumed_tokens(self) -> int:
        """How many tokens the resumed snapshot already holds."""
        return len(self.resume.token_ids) if self.resume else 0


# -- result --------------------------------------------------------------------


class Usage(_Frozen):
    """Tokens of one backend call; ``cached_tokens`` is the prompt part reused from cache."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class ChatResult(_Frozen):
    """What a backend returns for one (possibly sliced) call. See the module doc."""

    text: str
    finish_reason: FinishReason
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = Usage()
    token_ids: tuple[int, ...] | None = None
    run_time: float = 0.0
    model: str = ""

    def resume(self) -> Resume:
        """The snapshot to put in ``ChatRequest.resume`` to continue this generation."""
        return Resume(token_ids=self.token_ids or (), text=self.text)


class ModelInfo(_Frozen):
    """What a worker registers: the model it serves and its context length."""

    name: str
    context_length: int
    backend: str


# -- the interface ---------------------------------------------------------------


@runtime_checkable
class Backend(Protocol):
    """The interface a worker drives. All methods are coroutines."""

    name: str

    async def start(self) -> None:
        """Load the model or connect; raise :class:`BackendUnavailable` on failure."""

    async def close(self) -> None:
        """Release everything; safe to call twice."""

    async def health(self) -> bool:
        """True when the backend can serve: busy counts as able. Never raises.

        A probe that a server queues behind generations must not make a busy
        backend look dead: see :func:`~.http.probe_health`.
        """

    async def check(self) -> list[str]:
        """Known-bad server settings this backend can detect, one warning each.

        Called once at start, after the backend became healthy; a setting that
        makes serving impossible raises :class:`BackendUnavailable` instead.
        """

    async def info(self) -> ModelInfo:
        """The served model's name and context length."""

    async def metrics(self) -> dict[str, float]:
        """Load figures for heartbeats (running/queued requests, cache hit rate...)."""

    async def chat(self, request: ChatRequest, slice_tokens: int | None = None) -> ChatResult:
        """Run one call, or one slice of it when ``slice_tokens`` is given."""


#: Finish reasons as servers spell them, mapped to ours (``length`` is resolved by :func:`finish_reason`).
_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "eos": "stop",
    "content_filter": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}


def finish_reason(raw: object, *, sliced: bool, what: str, produced: int) -> FinishReason:
    """The one rule of every backend: a generation is complete only when the backend said why it ended.

    ``raw`` is the server's reason (``"stop"``, ``"length"``, ``"tool_calls"``,
    ...). No reason (a stream closed early, as llama-cpp-python's server does
    to a streamed call when another request arrives), or an ``abort``, raises
    :class:`IncompleteGeneration`: the caller must never see a cut-off answer
    as a normal one. ``produced`` (tokens or chunks received) goes into the message.
    """
    reason = _REASONS.get(raw) if isinstance(raw, str) else None
    if reason is None:
        raise IncompleteGeneration(
            f"{what}: generation ended without a finish reason (got {raw!r} after {produced} tokens); "
            "the output is incomplete and was discarded"
        )
    if reason == "length" and sliced:
        return "slice"
    return reason


def completion_budget(request: ChatRequest, slice_tokens: int | None) -> tuple[int, bool]:
    """How many tokens this call may generate, and whether the slice is the limit.

    ``max_tokens`` bounds the whole generation, resumed tokens included.
    """
    remaining = request.max_tokens - request.resumed_tokens
    if remaining <= 0:
        raise BackendBadRequest("resume already holds max_tokens tokens")
    if slice_tokens is not None and slice_tokens < 1:
        raise BackendBadRequest("slice_tokens must be at least 1")
    if slice_tokens is not None and slice_tokens < remaining:
        return slice_tokens, True
    return remaining, False
