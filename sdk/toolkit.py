"""Writing a tool: the :class:`Tool` declaration, the :class:`ToolContext` a call gets, :class:`ToolError`.

A tool package declares each tool as a module-level :class:`Tool` and lists it
in its packaging metadata under the entry-point group ``aiosd.tools``::

    [options.entry_points]
    aiosd.tools =
        word_count = my_tools.text:WORD_COUNT

The scheduler imports the package to read the declarations (name, schema,
limits: it serves ``tool.list`` and validates ``tool.call`` arguments), and
``aiosd tools`` runs ``run(args, ctx)`` in a fresh child process per call.
So a tool module must import cheaply and without side effects, and the
package must be installed wherever the scheduler and ``aiosd tools`` run.

This module uses the standard library only (and :mod:`.errors`, which does too): it is imported inside every
sandboxed child process, which must start fast and small.
"""

from __future__ import annotations

import base64
import importlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AiosdError

#: The codes a tool may give a :class:`ToolError` (protocol error codes).
TOOL_ERROR_CODES = ("tool_failed", "invalid_args", "not_found", "too_large", "unavailable")

#: A call into the kernel from inside a child: ``(service, params) -> result``.
KernelCall = Callable[[str, dict[str, Any]], Any]


class ToolError(AiosdError):
    """Raised by a tool for an expected failure; the caller gets ``code`` and the message."""

    def __init__(self, message: str, code: str = "tool_failed") -> None:
        if code not in TOOL_ERROR_CODES:
            raise ValueError(f"ToolError code must be one of {TOOL_ERROR_CODES}")
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class StoredFile:
    """A file from the calling agent's storage."""

    path: str
    version: int
    content_type: str
    data: bytes

    def text(self, encoding: str = "utf-8") -> str:
        """The content decoded as text (undecodable bytes replaced)."""
        return self.data.decode(encoding, errors="replace")


class ToolContext:
    """What a running tool knows and may ask of the kernel.

    ``agent`` is the broker-proven caller, ``scratch`` the call's private
    working directory (also the current directory; deleted afterwards).
    Kernel services are reached through the tools process, which scopes
    them to ``agent``: a tool cannot name another agent's data.
    """

    def __init__(
        self, agent: str, call_id: str, tool: str, scratch: Path, deadline: float, kernel: KernelCall | None = None
    ) -> None:
        self.agent = agent
        self.call_id = call_id
        self.tool = tool
        self.scratch = scratch
        self.deadline = deadline
        self._kernel = kernel

    def time_left(self) -> float:
        """Seconds until the call is killed."""
        return max(self.deadline - time.monotonic(), 0.0)

    def read_file(self, path: str, version: int | None = None) -> StoredFile:
        """Read a file of the calling agent's storage; :class:`ToolError` (``not_found``) if absent."""
        if self._kernel is None:
            raise ToolError("no kernel services in this context", "tool_failed")
        got = self._kernel("storage.read", {"path": path, "version": version})
        return StoredFile(
            path=str(got["path"]),
            version=int(got["version"]),
            content_type=str(got["content_type"]),
            data=base64.b64decode(got["data"]),
        )


@dataclass(frozen=True)
class Tool:
    """One tool's declaration.

    ``parameters`` is the JSON Schema (draft 2020-12) of the ``args`` object;
    calls are validated against it before anything runs. ``run`` gets the
    validated args and a :class:`ToolContext` and returns any JSON value.
    ``irreversible`` tools (effects that cannot be undone) wait for a human
    approval on every call. ``timeout`` is a call's default wall-clock limit
    in seconds, ``max_timeout`` the most a caller may ask for.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    run: Callable[[dict[str, Any], ToolContext], Any]
    irreversible: bool = False
    timeout: float = 10.0
    max_timeout: float = 60.0


def resolve(entry: str) -> Any:
    """The object an entry-point value (``package.module:attr``) names; the child loads its tool this way."""
    module, _, attr = entry.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj
