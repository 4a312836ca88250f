"""Arguments and results of the ``tool.*`` syscalls.

Tools are functions registered with the kernel (Python entry-point group
``aiosd.tools``) and run by ``aiosd tools`` in a child process with a
wall-clock timeout and resource limits. ``tool.list`` returns each tool the
caller may use with the JSON Schema of its arguments (``parameters``, as
in an OpenAI-style function tool); ``tool.call`` runs one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from .errors import AiosdError
from .protocol import ErrorCode

#: Tool names: what OpenAI-style function calling accepts, lower case, no dots.
TOOL_NAME = r"^[a-z][a-z0-9_]{0,63}$"
#: Longest wall-clock timeout a call may ask for; each tool's own maximum is lower or equal.
MAX_TOOL_TIMEOUT = 3600.0


class _Args(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True)


class ToolCallArgs(_Args):
    """``tool.call``: run one tool with arguments that must validate against its schema."""

    name: str = Field(pattern=TOOL_NAME, description="The tool (see tool.list).")
    args: dict[str, Any] = Field(default_factory=dict, description="The tool's arguments (its `parameters` schema).")
    timeout: float | None = Field(
        default=None,
        gt=0,
        le=MAX_TOOL_TIMEOUT,
        description="Wall-clock seconds; at most the tool's max_timeout. Default: the tool's timeout.",
    )


class ToolCallResult(_Result):
    """``tool.call`` result: what the tool returned (any JSON value)."""

    name: str
    result: Any = Field(description="The tool's return value.")
    duration_ms: float = Field(description="Wall-clock time of the child process running the tool.")


class ToolListArgs(_Args):
    """``tool.list``: the tools the caller's policy lets it call."""


class ToolInfo(_Result):
    """One tool as ``tool.list`` describes it."""

    name: str
    description: str
    parameters: dict[str, Any] = Field(description="JSON Schema of the tool's arguments.")
    irreversible: bool = Field(description="Its effects cannot be undone: every call waits for a human approval.")
    timeout: float = Field(description="Default wall-clock seconds of a call.")
    max_timeout: float = Field(description="Largest timeout a call may ask for.")


class ToolListResult(_Result):
    """``tool.list`` result, by name."""

    tools: list[ToolInfo]


# -- what a tool runner and the kernel agree on -------------------------------


class ToolFailure(AiosdError):
    """A call that did not produce a result; ``code`` is the protocol error code for the caller."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class FileBytes:
    """One version of a stored file."""

    path: str
    version: int
    content_type: str
    data: bytes


class StorageReader(Protocol):
    """Reads one agent's stored files; raises :class:`ToolFailure` (``not_found``...) when it cannot."""

    def read(self, agent: str, path: str, version: int | None) -> FileBytes: ...
