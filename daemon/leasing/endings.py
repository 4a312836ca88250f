"""Calls taken out of the lease book on their way to a committed reply, kept while the store is away.

A call leaves the lease book when its answer (or failure) is settled, before
its reply is committed: the book must not lease it again meanwhile. If the
commit then fails on a passing store error (an outage, a timeout, an
election), nothing else would ever answer the call (its redelivered answer
finds no lease to settle), so its :class:`Ending` is parked and the commit
tried again until it succeeds. Each step of an ending is done once, however
often its commit is tried in this scheduler: its usage is counted and its
session extended once. (The audit append of a retried commit can repeat, if
the store applied it and its acknowledgement was lost.)

While a call is ending, and for a while after a parked call's reply is
committed, the recovery sweep must not run it again from its live record:
:class:`Endings` answers whether a key is ending. A key is marked before the
call leaves the book, so it is always in one place or the other.

A scheduler stopped while endings are parked leaves their live records as
they were last written (accepted, queued or leased); the next start runs
those calls again, as after a crash.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from pymongo.errors import BulkWriteError, InvalidOperation, OperationFailure, PyMongoError

from aiosd.daemon.pipeline.flow import TRANSIENT
from aiosd.daemon.pipeline.records import Envelope
from aiosd.daemon.store import Doc
from aiosd.sdk.cluster import Outcome
from aiosd.sdk.protocol import ErrorCode, Reply

#: Server error codes that pass (time limits, write concern timeouts, write conflicts, elections,
#: shutdowns): the same write may succeed when tried again.
PASSING_CODES = frozenset({50, 64, 91, 112, 189, 10107, 11600, 11602, 13435, 13436})
#: Seconds a committed parked call stays marked: longer than a recovery sweep's read and its run.
RECENT_SECONDS = 60.0


def passing(exc: BaseException) -> bool:
    """Whether a store error passes (try again later) rather than refuses the write.

    ``InvalidOperation`` is the client closed at a stop: the next start runs the call again.
    """
    if isinstance(exc, (*TRANSIENT, InvalidOperation)):  # the pipeline's transient errors, and more
        return True
    if isinstance(exc, PyMongoError) and (
        exc.has_error_label("RetryableWriteError") or exc.has_error_label("TransientTransactionError")
    ):
        return True
    return isinstance(exc, OperationFailure) and not isinstance(exc, BulkWriteError) and exc.code in PASSING_CODES


@dataclass(eq=False)
class Ending:
    """A call out of the lease book: a worker's answer to commit, or a failure."""

    #: The book's entry for the call (its usage, slices, run time).
    entry: Doc
    #: The worker's answer; ``None`` for a call that fails with ``failure``.
    answer: Outcome | None = None
    failure: tuple[ErrorCode, str] | None = None
    #: Read once from the call's live record; ``read`` with no envelope: the record is gone.
    env: Envelope | None = None
    read: bool = False
    #: Made once (its tokens counted once).
    reply: Reply | None = None
    #: The call's session extended with its messages and the answer.
    remembered: bool = False
    #: The store refused the reply (not an outage): the call is failed instead, once.
    refused: bool = False
    #: Parked at least once: the recovery sweep may see its live record as still to do.
    parked: bool = False

    @property
    def key(self) -> str:
        """The call's key (its live record's ``_id``)."""
        return str(self.entry["_id"])

    @property
    def gone(self) -> bool:
        """The call's live record was already retired: a late duplicate, nothing to reply to."""
        return self.read and self.env is None


class Endings:
    """The calls ending in this scheduler, those of them parked until the store is back, and lately parked ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[str] = set()
        self._parked: dict[str, Ending] = {}
        self._recent: OrderedDict[str, float] = OrderedDict()

    def open(self, key: str) -> bool:
        """Mark ``key`` as ending (before its call leaves the book); ``True`` if it was not already."""
        with self._lock:
            if key in self._open or key in self._parked:
                return False
            self._open.add(key)
            return True

    def close(self, key: str) -> None:
        """Unmark ``key``: its call did not leave the book after all (a stale outcome)."""
        with self._lock:
            self._open.discard(key)

    def done(self, endings: list[Ending]) -> None:
        """``endings`` are committed (or given up); a parked one's key stays marked for a while."""
        now = time.monotonic()
        with self._lock:
            for e in endings:
                self._open.discard(e.key)
                if e.parked:
                    self._recent[e.key] = now
                    self._recent.move_to_end(e.key)
            while self._recent and next(iter(self._recent.values())) < now - RECENT_SECONDS:
                self._recent.popitem(last=False)

    def park(self, endings: list[Ending]) -> None:
        """Keep ``endings`` (those still to be replied to) for the next try."""
        with self._lock:
            for e in endings:
                self._open.discard(e.key)
                if not e.gone:
                    e.parked = True
                    self._parked[e.key] = e

    def take(self) -> list[Ending]:
        """Every parked ending, now the caller's to commit (or park again)."""
        with self._lock:
            items = list(self._parked.values())
            self._parked.clear()
            self._open.update(e.key for e in items)
        return items

    def parked(self) -> int:
        """How many endings wait for the store."""
        with self._lock:
            return len(self._parked)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            if key in self._open or key in self._parked:
                return True
            at = self._recent.get(key) if isinstance(key, str) else None
            return at is not None and at >= time.monotonic() - RECENT_SECONDS
