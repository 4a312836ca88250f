"""Access policies: what one agent may do, validated when written.

A policy is one document per agent (deny by default: an agent without one
may do nothing). Syscall, model and approval lists hold shell-style patterns
(``memory.*``) matched with :func:`fnmatch.fnmatchcase`. Every quota is
optional: ``None`` means unlimited. The defaults below are what
``aiosd agents add`` gives a new agent.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aiosd.daemon.errors import InvalidPolicy
from aiosd.sdk.protocol import MAX_PRIORITY, Request, describe_validation
from aiosd.sdk.syscalls import CATALOGUE, served_by

#: Agent names are broker user names and part of reply-queue names, so no dots.
AGENT_NAME = re.compile(r"^[a-z][a-z0-9_-]{1,62}$")
Period = Literal["hour", "day", "month"]
#: The built-in tools that touch nothing but their arguments and the caller's own files.
SAFE_TOOLS = ("calculator", "json_query", "regex", "read_file")
TOOL_PATTERN = re.compile(r"^[a-z0-9_*?\[\]!-]{1,64}$")
Resource = Literal["memory", "storage"]


def validate_agent_name(name: str) -> str:
    """Return ``name`` if it is a valid agent name, else raise :class:`InvalidPolicy`."""
    if not AGENT_NAME.match(name):
        raise InvalidPolicy(
            f"invalid agent name {name!r}: use 2-63 characters a-z, 0-9, '_' or '-', starting with a letter"
        )
    return name


def _memory_only() -> list[Resource]:
    return ["memory"]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RateLimit(_Strict):
    """At most ``requests`` syscalls per fixed window of ``seconds``."""

    requests: int = Field(ge=1, le=1_000_000)
    seconds: int = Field(default=60, ge=1, le=86_400)


class Grant(_Strict):
    """Read access to this agent's data for another agent."""

    agent: str = Field(description="The agent allowed to read.")
    resources: list[Resource] = Field(default_factory=_memory_only, min_length=1)

    @field_validator("agent")
    @classmethod
    def _name(cls, value: str) -> str:
        if not AGENT_NAME.match(value):
            raise ValueError(f"{value!r} is not a valid agent name")
        return value


class Policy(_Strict):
    """What one agent may do. Field defaults are the policy of a new agent."""

    syscalls: list[str] = Field(
        default_factory=lambda: [
            "memory.*",
            "llm.*",
            "context.*",
            "storage.*",
            "tool.*",
            "syscall.result",
            "task.submit",
            "task.get",
            "task.cancel",
            "task.list",
            "batch.*",
        ],
        description="Allowed syscall patterns.",
    )
    programs: list[str] = Field(
        default_factory=lambda: ["*"], description="Agent program patterns task.submit and batches may run."
    )
    runner: bool = Field(
        default=False,
        description="A task runner: may start tasks (task.start/heartbeat/finish) and act for their agents.",
    )
    models: list[str] = Field(default_factory=lambda: ["*"], description="Allowed model patterns for llm.* calls.")
    tools: list[str] = Field(
        default_factory=lambda: list(SAFE_TOOLS),
        description="Tool name patterns tool.call may run (built-ins by default).",
    )
    max_priority: int = Field(default=5, ge=0, le=MAX_PRIORITY, description="Higher priorities are clamped to this.")
    quota_period: Period = Field(default="day", description="Period of the token and request quotas (UTC).")
    tokens_per_period: int | None = Field(default=200_000, ge=0, description="Prompt + completion tokens.")
    requests_per_period: int | None = Field(default=50_000, ge=0, description="Syscalls admitted per period.")
    rate_limit: RateLimit | None = Field(default_factory=lambda: RateLimit(requests=600, seconds=60))
    max_concurrent_llm: int | None = Field(default=4, ge=1, description="LLM calls leased to workers at once.")
    weight: float = Field(
        default=1.0,
        gt=0,
        le=1000,
        description="Share of the LLM workers under the fair scheduling policy, relative to other agents' weights.",
    )
    memory_notes: int | None = Field(default=10_000, ge=0, description="Live memory notes.")
    memory_bytes: int | None = Field(default=64 * 2**20, ge=0, description="UTF-8 bytes of live note contents.")
    storage_bytes: int | None = Field(default=2**30, ge=0, description="Bytes of every kept version of every file.")
    storage_versions: int = Field(
        default=10, ge=1, le=1000, description="Versions kept per file; older ones are pruned."
    )
    storage_file_bytes: int | None = Field(default=16 * 2**20, ge=0, description="Largest size of one file version.")
    groups: list[str] = Field(
        default_factory=list, description="Agents sharing a group read each other's memory (files: storage.share)."
    )
    grants: list[Grant] = Field(default_factory=list, description="Agents allowed to read this agent's data.")
    approval_required: list[str] = Field(default_factory=list, description="Syscall patterns that wait for a human.")

    @field_validator("syscalls", "approval_required")
    @classmethod
    def _known_syscalls(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not any(fnmatchcase(name, pattern) for name in CATALOGUE):
                raise ValueError(f"pattern {pattern!r} matches no syscall (known: {', '.join(sorted(CATALOGUE))})")
        return patterns

    @field_validator("models")
    @classmethod
    def _models(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not 0 < len(pattern) <= 128:
                raise ValueError("model patterns must be 1-128 characters")
        return patterns

    @field_validator("tools")
    @classmethod
    def _tools(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not TOOL_PATTERN.match(pattern):
                raise ValueError(
                    f"tool pattern {pattern!r}: use 1-64 characters a-z, 0-9, '_' and the wildcards * ? [ ]"
                )
        return patterns

    @field_validator("groups")
    @classmethod
    def _groups(cls, groups: list[str]) -> list[str]:
        for group in groups:
            if not AGENT_NAME.match(group):
                raise ValueError(f"group {group!r}: use 2-63 characters a-z, 0-9, '_' or '-'")
        return groups

    @classmethod
    def unrestricted(cls) -> Policy:
        """Every syscall, every model, top priority, no quota (the operator's implicit policy)."""
        return cls(
            syscalls=["*"],
            max_priority=MAX_PRIORITY,
            tokens_per_period=None,
            requests_per_period=None,
            rate_limit=None,
            max_concurrent_llm=None,
            memory_notes=None,
            memory_bytes=None,
            storage_bytes=None,
            tools=["*"],
            storage_file_bytes=None,
            runner=True,
        )

    def allows_program(self, program: str) -> bool:
        """Whether tasks may run the agent program ``program``."""
        return any(fnmatchcase(program, p) for p in self.programs)

    def allows(self, syscall: str) -> bool:
        """Whether ``syscall`` matches one of the allowed patterns."""
        return any(fnmatchcase(syscall, p) for p in self.syscalls)

    def allows_model(self, model: str | None) -> bool:
        """Whether an LLM call may use ``model``; ``None`` (any worker) needs ``*``."""
        if model is None:
            return "*" in self.models
        return any(fnmatchcase(model, p) for p in self.models)

    def allows_tool(self, name: str) -> bool:
        """Whether ``tool.call`` may run the tool ``name``."""
        return any(fnmatchcase(name, p) for p in self.tools)

    def needs_approval(self, syscall: str) -> bool:
        """Whether ``syscall`` waits for a human approval before it runs."""
        return any(fnmatchcase(syscall, p) for p in self.approval_required)

    def grants_read(self, reader: str, resource: Resource) -> bool:
        """Whether this policy's owner lets ``reader`` read its ``resource`` by explicit grant."""
        return any(g.agent == reader and resource in g.resources for g in self.grants)


def parse_policy(data: Any) -> Policy:
    """Validate a policy document; raise :class:`InvalidPolicy` naming the bad fields."""
    if not isinstance(data, dict):
        raise InvalidPolicy("a policy must be a mapping of fields")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise InvalidPolicy(f"invalid policy: {describe_validation(exc)}") from exc


def load_policy_file(path: str | Path) -> Policy:
    """Read a policy from a YAML or JSON file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidPolicy(f"cannot read policy file {path}: {exc}") from exc
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InvalidPolicy(f"policy file {path} is not valid YAML/JSON: {exc}") from exc
    return parse_policy(data or {})


def resource_of(agent: str | None, request: Request) -> str | None:
    """The object a request acts on, for the audit log (``memory:<note>``, ``model:<name>``...)."""
    args = request.args
    ns = request.syscall.split(".", 1)[0]
    if ns == "memory":
        if "id" in args:
            return f"memory:{args['id']}"
        return f"memory:{args.get('owner') or agent}"
    if ns == "llm":
        return f"model:{args.get('model') or '*'}"
    if request.syscall == "syscall.result":
        return f"syscall:{args.get('id')}"
    if served_by(request.syscall) == "tools":
        return f"tool:{args.get('name')}"
    if ns == "storage":
        path = args.get("path") or args.get("prefix") or "/"
        return f"storage:{args.get('owner') or agent}:{str(path)[:256]}"
    return None
