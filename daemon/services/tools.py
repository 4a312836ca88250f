"""The scheduler's side of tools: ``tool.list``, checks of ``tool.call``, approvals and retries.

``tool.call`` itself is leased to a tool runner (``aiosd tools``) like an
LLM call to a worker. Before that, at intake, the named tool must be
installed and the arguments must match its JSON Schema (else ``invalid_args``,
and nothing runs); the caller's policy must list the tool (``tools``
patterns, else ``denied``); and a call of an irreversible tool waits for a
human approval whatever the policy says. A call of an irreversible tool
whose lease is lost (the tool runner died holding it) is failed rather than
run again: it may already have had its effect.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from aiosd.daemon.access.authorizer import PolicyLookup
from aiosd.daemon.services.context import CallContext
from aiosd.daemon.store import Doc
from aiosd.sdk.registry import ToolRegistry
from aiosd.sdk.syscalls import served_by
from aiosd.sdk.tools import ToolCallArgs, ToolListArgs, ToolListResult


class ToolService:
    """``tool.list`` and the tool-specific decisions of the other stages."""

    def __init__(self, registry: ToolRegistry, policies: PolicyLookup | None = None) -> None:
        self.registry = registry
        self._policies = policies

    def list_tools(self, ctx: CallContext, args: ToolListArgs) -> ToolListResult:
        """``tool.list``: the installed tools the caller's policy lets it call."""
        if self._policies is None:  # no access control wired: every tool
            return ToolListResult(tools=self.registry.infos())
        standing = self._policies.standing(ctx.agent)
        if standing is None:
            return ToolListResult(tools=[])
        return ToolListResult(tools=self.registry.infos(standing.policy.allows_tool))

    def check(self, args: BaseModel) -> str | None:
        """Intake check of ``tool.call``: why it cannot run, or ``None``."""
        assert isinstance(args, ToolCallArgs)
        return self.registry.check(args)

    def irreversible(self, syscall: str, args: dict[str, Any]) -> bool:
        """Whether a call must wait for a human: ``tool.call`` of an irreversible tool."""
        return served_by(syscall) == "tools" and self.registry.irreversible(str(args.get("name", "")))

    def may_retry(self, record: Doc) -> bool:
        """Whether a leased call whose lease was lost may run again."""
        return not self.irreversible(str(record.get("syscall")), record.get("args") or {})
