"""Ordering policies: the order in which queued leased calls (LLM and tool calls) go out.

A policy is a sort key over the queued calls the lease book holds in memory
(:mod:`.book` keeps them in a heap by that key, so a round looks at a window
of the best ones, never the whole backlog); the dispatcher leases down that
window while workers have room.
``slice_tokens`` makes the policy preemptive: a call runs for at most that
many tokens, is snapshotted and goes back to the queue (AIOS's context switch).
Program-aware policies (least attained service per ``program``) plug in here.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiosd.daemon.store import Doc


class Ordering(Protocol):
    """How queued LLM calls are ordered, and whether they are time-sliced."""

    name: str
    slice_tokens: int | None

    def key(self, call: Doc) -> tuple[Any, ...]:
        """The call's place in the order (smaller first)."""
        ...

    def order(self, queued: list[Doc]) -> list[Doc]:
        """Return ``queued`` in the order the calls should be leased."""
        ...


class Fifo:
    """First queued, first served (a time-sliced call re-queues at the back)."""

    name = "fifo"
    slice_tokens: int | None = None

    def key(self, call: Doc) -> tuple[Any, ...]:
        """Oldest queue entry first."""
        return (call["queued_at"],)

    def order(self, queued: list[Doc]) -> list[Doc]:
        """Oldest queue entry first."""
        return sorted(queued, key=self.key)


class Priority:
    """Highest AMQP priority first (9 before 0), FIFO within a priority.

    Within a priority, calls made by agent programs (tasks, batches) wait behind
    interactive calls: an overnight backlog never slows an agent at the keyboard.
    """

    name = "priority"
    slice_tokens: int | None = None

    def key(self, call: Doc) -> tuple[Any, ...]:
        """Priority descending, then interactive calls before tasks' calls, then oldest first."""
        return (-int(call.get("priority") or 0), bool(call.get("background")), call["queued_at"])

    def order(self, queued: list[Doc]) -> list[Doc]:
        """Priority descending, then oldest first."""
        return sorted(queued, key=self.key)


class RoundRobin(Fifo):
    """FIFO with time slices: every call yields after ``slice_tokens`` tokens."""

    name = "round_robin"

    def __init__(self, slice_tokens: int) -> None:
        self.slice_tokens = slice_tokens


def make_ordering(name: str, slice_tokens: int) -> Ordering:
    """The policy called ``name`` (a Settings value)."""
    if name == "fifo":
        return Fifo()
    if name == "priority":
        return Priority()
    if name == "round_robin":
        return RoundRobin(slice_tokens)
    raise ValueError(f"unknown scheduling policy {name!r}")
