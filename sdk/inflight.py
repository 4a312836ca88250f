"""The calls a client is waiting for, and what each still needs from the broker.

A call is *in flight* from the moment a caller publishes it until its reply
arrives (or, for a call made without a reply, until the broker confirmed it).
The table survives reconnects: it is what the transport walks after a lost
connection to re-publish what the broker may not hold and to fetch the stored
result of what it does hold.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeVar

from .protocol import Reply

T = TypeVar("T")


@dataclass(eq=False)
class Outgoing:
    """One request on its way: its wire form and the futures its caller waits on."""

    call_id: str
    routing_key: str
    body: bytes
    priority: int
    want_reply: bool
    #: Set when the broker confirmed the request (it holds it, durably).
    confirmed: Future[None] = field(default_factory=Future)
    #: Set with the call's final reply (only when ``want_reply``).
    reply: Future[Reply] = field(default_factory=Future)
    #: A query the transport makes for itself (``syscall.result`` after a reconnect).
    internal: bool = False
    #: Written to the current connection and not yet confirmed.
    sent: bool = False


class InFlight:
    """Thread-safe table of :class:`Outgoing` calls by call id."""

    def __init__(self) -> None:
        self._calls: dict[str, Outgoing] = {}
        self._lock = threading.Lock()

    def add(self, call: Outgoing) -> None:
        """Track ``call`` until it completes or is forgotten."""
        with self._lock:
            self._calls[call.call_id] = call

    def get(self, call_id: str) -> Outgoing | None:
        """The tracked call ``call_id``, if it is still in flight."""
        return self._calls.get(call_id)  # a single dict read is atomic

    def forget(self, call_id: str) -> Outgoing | None:
        """Stop tracking ``call_id``; a late reply or confirm for it is dropped."""
        with self._lock:
            return self._calls.pop(call_id, None)

    def snapshot(self) -> list[Outgoing]:
        """Every call in flight, in the order they were published."""
        with self._lock:
            return list(self._calls.values())

    def __len__(self) -> int:
        return len(self._calls)

    def confirm(self, call: Outgoing) -> None:
        """The broker holds ``call``: a call without a reply is done."""
        call.sent = False
        if not call.want_reply:
            self.forget(call.call_id)
        _settle(call.confirmed, lambda f: f.set_result(None))

    def resolve(self, call_id: str, reply: Reply) -> bool:
        """Complete ``call_id`` with ``reply``; return whether anyone was waiting for it."""
        call = self.forget(call_id)
        if call is None:
            return False
        # A reply proves the broker had the request, whatever became of its confirm.
        _settle(call.confirmed, lambda f: f.set_result(None))
        _settle(call.reply, lambda f: f.set_result(reply))
        return True

    def fail(self, call: Outgoing, error: BaseException) -> None:
        """End ``call`` with ``error`` for whoever waits on it."""
        self.forget(call.call_id)
        _settle(call.confirmed, lambda f: f.set_exception(error))
        _settle(call.reply, lambda f: f.set_exception(error))

    def fail_all(self, error: BaseException) -> None:
        """End every call in flight with ``error`` (the client is closing)."""
        for call in self.snapshot():
            self.fail(call, error)


def _settle(fut: Future[T], how: Callable[[Future[T]], None]) -> None:
    # Callers may have given up (cancelled) or another path settled it first.
    if fut.done():
        return
    try:
        how(fut)
    except Exception:  # InvalidStateError: lost a race with cancel(); nothing waits any more
        return
