"""The tool registry: every :class:`~.toolkit.Tool` installed under the entry-point group ``aiosd.tools``.

Both the scheduler (``tool.list``, argument validation, approvals of
irreversible tools) and ``aiosd tools`` (running calls) load it at start, so a
tool package must be installed where both run. A declaration that does not
load or is invalid (bad name, schema that is not a JSON Schema, timeouts out of
order, a name taken twice) is skipped and reported in :attr:`ToolRegistry.errors`
and the log; it never stops the process.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import jsonschema
from jsonschema.validators import Draft202012Validator

from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.toolkit import Tool, resolve
from aiosd.sdk.tools import MAX_TOOL_TIMEOUT, TOOL_NAME, ToolCallArgs, ToolInfo

log = get_logger(__name__)

GROUP = "aiosd.tools"
_NAME = re.compile(TOOL_NAME)
#: Schema errors quoted in one refusal.
MAX_REPORTED = 5


@dataclass(frozen=True)
class Registered:
    """A valid tool and where a child process finds it again (``module:attr``)."""

    tool: Tool
    entry: str
    validator: Draft202012Validator

    def info(self) -> ToolInfo:
        """How ``tool.list`` shows it."""
        t = self.tool
        return ToolInfo(
            name=t.name,
            description=t.description,
            parameters=dict(t.parameters),
            irreversible=t.irreversible,
            timeout=t.timeout,
            max_timeout=t.max_timeout,
        )


class ToolRegistry:
    """Tools by name, with their argument validators."""

    def __init__(self, entries: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        """Load ``(entry-point name, "module:attr")`` pairs; see :meth:`load` for the installed ones."""
        self.tools: dict[str, Registered] = {}
        self.errors: list[str] = []
        pairs = entries.items() if isinstance(entries, Mapping) else entries
        for name, entry in pairs:
            self._add(name, entry)

    @classmethod
    def load(cls, group: str = GROUP) -> ToolRegistry:
        """Every tool installed under ``group``, sorted by entry-point name."""
        found = sorted(entry_points(group=group), key=lambda ep: (ep.name, ep.value))
        registry = cls((ep.name, ep.value) for ep in found)
        log.info("tools_loaded", tools=sorted(registry.tools), errors=len(registry.errors))
        return registry

    def _add(self, name: str, entry: str) -> None:
        try:
            tool = resolve(entry)
        except Exception as exc:  # a broken tool package must not take the process down
            self._reject(name, entry, f"cannot be imported: {type(exc).__name__}: {exc}")
            return
        problem = _problem(name, tool)
        if problem is None and name in self.tools:
            problem = f"the name is already taken by {self.tools[name].entry}"
        if problem is not None:
            self._reject(name, entry, problem)
            return
        self.tools[name] = Registered(tool, entry, Draft202012Validator(dict(tool.parameters)))

    def _reject(self, name: str, entry: str, problem: str) -> None:
        message = f"tool {name!r} ({entry}) {problem}"
        self.errors.append(message)
        log.error("tool_rejected", tool=name, entry=entry, problem=problem)

    # -- lookups ---------------------------------------------------------------------

    def get(self, name: str) -> Registered | None:
        """The tool called ``name``, if installed."""
        return self.tools.get(name)

    def irreversible(self, name: str) -> bool:
        """Whether ``name`` is an installed irreversible tool."""
        found = self.tools.get(name)
        return found is not None and found.tool.irreversible

    def infos(self, allowed: Callable[[str], bool] = lambda _name: True) -> list[ToolInfo]:
        """Descriptions of the tools for which ``allowed(name)`` holds, by name."""
        return [self.tools[n].info() for n in sorted(self.tools) if allowed(n)]

    def check(self, call: ToolCallArgs) -> str | None:
        """Why ``call`` cannot run as given (unknown tool, bad arguments, timeout too long), or ``None``."""
        found = self.tools.get(call.name)
        if found is None:
            known = ", ".join(sorted(self.tools)) or "none"
            return f"unknown tool {call.name!r} (installed: {known})"
        if call.timeout is not None and call.timeout > found.tool.max_timeout:
            return f"timeout: {call.timeout:g}s is more than {call.name}'s max_timeout of {found.tool.max_timeout:g}s"
        errors = sorted(found.validator.iter_errors(call.args), key=lambda e: list(e.absolute_path))
        if not errors:
            return None
        parts = [f"{_where(e)}: {e.message}" for e in errors[:MAX_REPORTED]]
        if len(errors) > MAX_REPORTED:
            parts.append(f"and {len(errors) - MAX_REPORTED} more")
        return f"arguments of tool {call.name} do not match its schema: " + "; ".join(parts)


def _where(error: jsonschema.ValidationError) -> str:
    return "args" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)


def _problem(name: str, tool: Any) -> str | None:
    """What is wrong with a declaration, or ``None``."""
    if not isinstance(tool, Tool):
        return f"is a {type(tool).__name__}, not an aiosd.sdk.toolkit.Tool"
    if tool.name != name:
        return f"is declared as {tool.name!r}: the entry-point name must be the tool's name"
    if not _NAME.match(name):
        return f"has an invalid name: use {TOOL_NAME}"
    if not tool.description.strip():
        return "has no description"
    if not callable(tool.run):
        return "has no callable run"
    if not 0 < tool.timeout <= tool.max_timeout <= MAX_TOOL_TIMEOUT:
        return f"needs 0 < timeout <= max_timeout <= {MAX_TOOL_TIMEOUT:g}"
    schema = dict(tool.parameters)
    if schema.get("type") != "object":
        return "parameters must be a JSON Schema of type 'object'"
    try:
        Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"parameters are not a valid JSON Schema: {exc.message}"
    return None
