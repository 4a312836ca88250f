"""Ordering policies: the order in which queued leased calls (LLM and tool calls) go out.

A policy is a sort key over the queued calls the lease book holds in memory
(:mod:`.book` keeps them in a heap by that key, so a round looks at a window
of the best ones, never the whole backlog); the dispatcher leases down that
window while workers have room.
``slice_tokens`` makes the policy preemptive: a call runs for at most that
many tokens, is snapshotted and goes back to the queue (AIOS's context switch).

A key is computed once each time a call is queued (the heap keeps it; a call
put back unleased keeps its place). Stateful policies learn from two hooks:
:meth:`Ordering.granted` when the dispatcher leases a call, and
:meth:`Ordering.charge` when a worker reports the usage of a call or slice.
The program-aware policies live in their own modules: ``las``
(:mod:`.attained`, least attained service per program) and ``fair``
(:mod:`.fairshare`, weighted fair share per agent).
"""

from __future__ import annotations

from typing import Any, Protocol

from aiosd.daemon.leasing.attained import LeastAttained
from aiosd.daemon.leasing.fairshare import FairShare, WeightOf
from aiosd.daemon.leasing.tuning import Tuning
from aiosd.daemon.store import Doc
from aiosd.sdk.protocol import Usage


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

    def granted(self, call: Doc) -> None:
        """``call`` was leased to a worker."""
        ...

    def charge(self, call: Doc, usage: Usage) -> None:
        """A worker reported ``usage`` for ``call`` (the whole call, or one time slice)."""
        ...


class _Stateless:
    """Policies whose order depends on the call alone ignore the hooks."""

    def granted(self, call: Doc) -> None:
        """Nothing to note."""

    def charge(self, call: Doc, usage: Usage) -> None:
        """Nothing to note."""


class Fifo(_Stateless):
    """First queued, first served (a time-sliced call re-queues at the back)."""

    name = "fifo"
    slice_tokens: int | None = None

    def key(self, call: Doc) -> tuple[Any, ...]:
        """Oldest queue entry first."""
        return (call["queued_at"],)

    def order(self, queued: list[Doc]) -> list[Doc]:
        """Oldest queue entry first."""
        return sorted(queued, key=self.key)


class Priority(_Stateless):
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


def make_ordering(
    name: str, slice_tokens: int, tuning: Tuning | None = None, weight_of: WeightOf | None = None
) -> Ordering:
    """The policy called ``name`` (a Settings value); ``weight_of`` gives agents' shares under ``fair``."""
    if name == "fifo":
        return Fifo()
    if name == "priority":
        return Priority()
    if name == "round_robin":
        return RoundRobin(slice_tokens)
    if name == "las":
        return LeastAttained(tuning or Tuning())
    if name == "fair":
        return FairShare(tuning or Tuning(), weight_of)
    raise ValueError(f"unknown scheduling policy {name!r}")
