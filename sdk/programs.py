"""The agent program author API: a program is a function of a :class:`ProgramContext`.

A program is registered under the ``aiosd.programs`` entry-point group::

    [options.entry_points]
    aiosd.programs =
        summarize = mypackage.programs:summarize

and written as ``def summarize(ctx: ProgramContext) -> Any``: it reads
``ctx.input``, makes syscalls with ``ctx.call`` (or the helpers ``ctx.chat``,
``ctx.remember``, ``ctx.recall``, ``ctx.tool``) and returns a JSON-serializable
output. ``aiosd runner`` runs it for the task's agent, under the agent's policy.

**Durable execution -- the one rule.** A task that is run again (its runner
crashed, or its lease ran out) replays: each syscall gets the message id
``<task>.<n>`` (its place in the order of the program's calls), so the calls
the first run completed are answered from their stored replies -- LLM tokens
already paid for are not paid again -- and the program continues from the
first call that had not completed. So a program must make the same syscalls,
with the same arguments, in the same order, given the same input and the
same replies: no calls whose arguments depend on the clock, on randomness or on
anything outside its input and its replies, and no calls from several threads
at once. A replayed call that differs from the stored one fails with
``replay_diverged`` (the task fails with that code).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, Unpack

from .calls import CallOptions
from .errors import CallError
from .protocol import ErrorCode, Reply, Status, Usage
from .tasks import PROGRAM_GROUP, TaskBinding, TaskUsage, task_message_id

#: A program: takes its context, returns its JSON output.
Program = Callable[["ProgramContext"], Any]


class Sender(Protocol):
    """What a program's calls go through (the runner's SDK client)."""

    def request(self, syscall: str, args: dict[str, Any] | None = None, **options: Unpack[CallOptions]) -> Reply: ...


class TaskLost(Exception):
    """The runner no longer holds the task (cancelled, or taken over): the program must stop."""


@dataclass
class ProgramContext:
    """A running task as its program sees it."""

    task_id: str
    agent: str
    attempt: int
    input: Any
    binding: TaskBinding
    sender: Sender
    priority: int = 0
    timeout: float | None = None
    #: Set when the runner lost the task's lease; the next call raises :class:`TaskLost`.
    lost: threading.Event = field(default_factory=threading.Event)
    _seq: int = 0
    _usage: Usage = field(default_factory=Usage)
    _calls: int = 0

    def request(self, syscall: str, args: dict[str, Any] | None = None) -> Reply:
        """Make the program's next syscall and return its full reply, whatever its status."""
        if self.lost.is_set():
            raise TaskLost(f"task {self.task_id} is no longer held by this runner")
        self._seq += 1
        reply = self.sender.request(
            syscall,
            args,
            message_id=task_message_id(self.task_id, self._seq),
            priority=self.priority,
            program=self.task_id,
            task=self.binding,
            timeout=self.timeout,
        )
        self._calls += 1
        self._usage = self._usage.plus(reply.usage)
        if reply.status != Status.OK and reply.error is not None and self.lost.is_set():
            raise TaskLost(f"task {self.task_id} is no longer held by this runner")
        return reply

    def call(self, syscall: str, args: dict[str, Any] | None = None) -> Any:
        """Make the program's next syscall; return its result or raise :class:`CallError`."""
        reply = self.request(syscall, args)
        if reply.status == Status.OK:
            return reply.result
        error = reply.error
        code = error.code.value if error is not None else ErrorCode.INTERNAL.value
        raise CallError(code, error.message if error is not None else "no error detail", reply)

    def chat(self, messages: list[dict[str, Any]], *, max_tokens: int = 256, **options: Any) -> str:
        """``llm.chat``: the assistant's text."""
        result = self.call("llm.chat", {"messages": messages, "max_tokens": max_tokens, **options})
        return str(result.get("text") or "")

    def remember(self, content: str, tags: list[str] | None = None) -> str:
        """``memory.add``: the note's id."""
        return str(self.call("memory.add", {"content": content, "tags": tags or []})["id"])

    def recall(self, query: str, k: int = 5) -> list[dict[str, Any]]:
        """``memory.search``: the best notes for ``query``."""
        return list(self.call("memory.search", {"query": query, "limit": k}).get("results") or [])

    def tool(self, name: str, args: dict[str, Any]) -> Any:
        """``tool.call``: the tool's result."""
        return self.call("tool.call", {"name": name, "args": args}).get("result")

    @property
    def usage(self) -> TaskUsage:
        """What this run's calls consumed (replayed calls included: they are the same calls)."""
        return TaskUsage(
            syscalls=self._calls,
            prompt_tokens=self._usage.prompt_tokens,
            completion_tokens=self._usage.completion_tokens,
            cached_tokens=self._usage.cached_tokens,
        )


def load_programs() -> tuple[dict[str, Program], dict[str, str]]:
    """The installed programs by name, and the entry points that failed to load (with why)."""
    programs: dict[str, Program] = {}
    errors: dict[str, str] = {}
    for ep in entry_points(group=PROGRAM_GROUP):
        try:
            loaded = ep.load()
        except Exception as exc:  # one broken package must not hide the others
            errors[ep.name] = f"{type(exc).__name__}: {exc}"
            continue
        if not callable(loaded):
            errors[ep.name] = f"{ep.value} is not callable"
            continue
        programs[ep.name] = loaded
    return programs, errors


__all__ = ["CallError", "Program", "ProgramContext", "TaskLost", "load_programs"]
