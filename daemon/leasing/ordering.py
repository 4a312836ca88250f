"""Ordering policies: the order in which queued leased calls (LLM and tool calls) go out.

A policy names the MongoDB sort that picks the window of queued calls worth
considering (so a long backlog is never loaded whole) and then orders that
window; the dispatcher leases down that list while workers have room.
``slice_tokens`` makes the policy preemptive: a call runs for at most that
many tokens, is snapshotted and goes back to the queue (AIOS's context switch).
Program-aware policies (least attained service per ``program``) plug in here.
"""

from __future__ import annotations

from typing import Protocol

from aiosd.daemon.store import Doc


class Ordering(Protocol):
    """How queued LLM calls are ordered, and whether they are time-sliced."""

    name: str
    slice_tokens: int | None
    sort: tuple[tuple[str, int], ...]

    def order(self, queued: list[Doc]) -> list[Doc]:
        """Return ``queued`` in the order the calls should be leased."""
        ...


class Fifo:
    """First queued, first served (a time-sliced call re-queues at the back)."""

    name = "fifo"
    slice_tokens: int | None = None
    sort: tuple[tuple[str, int], ...] = (("queued_at", 1),)

    def order(self, queued: list[Doc]) -> list[Doc]:
        """Oldest queue entry first."""
        return sorted(queued, key=lambda d: d["queued_at"])


class Priority:
    """Highest AMQP priority first (9 before 0), FIFO within a priority."""

    name = "priority"
    slice_tokens: int | None = None
    sort: tuple[tuple[str, int], ...] = (("priority", -1), ("queued_at", 1))

    def order(self, queued: list[Doc]) -> list[Doc]:
        """Priority descending, then oldest first."""
        return sorted(queued, key=lambda d: (-int(d.get("priority") or 0), d["queued_at"]))


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
