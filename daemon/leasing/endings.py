"""Calls taken out of the lease book on their way to a committed reply, kept while the store is away.

A call leaves the lease book when its answer (or failure) is settled, before
its reply is committed: the book must not lease it again meanwhile. If the
commit then fails on a transient store error, nothing else would ever answer
the call (its redelivered answer finds no lease to settle), so its
:class:`Ending` is parked and the commit tried again until it succeeds. Each
step of an ending is done once, however often its commit is tried in this
scheduler: its usage is counted and its session extended once.

While a call is ending (settled and not yet committed, or parked), the
recovery sweep must not queue it again from its live record: :class:`Endings`
answers whether a key is ending.

A scheduler stopped while endings are parked leaves their live records as
they were last written (accepted, queued or leased); the next start runs
those calls again, as after a crash.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from aiosd.daemon.pipeline.records import Envelope
from aiosd.daemon.store import Doc
from aiosd.sdk.cluster import Outcome
from aiosd.sdk.protocol import ErrorCode, Reply


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

    @property
    def key(self) -> str:
        """The call's key (its live record's ``_id``)."""
        return str(self.entry["_id"])

    @property
    def gone(self) -> bool:
        """The call's live record was already retired: a late duplicate, nothing to reply to."""
        return self.read and self.env is None


class Endings:
    """The calls ending in this scheduler, and those of them parked until the store is back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[str] = set()
        self._parked: dict[str, Ending] = {}

    def begin(self, endings: list[Ending]) -> None:
        """``endings`` left the book: their calls are ending until :meth:`done` or :meth:`park`."""
        with self._lock:
            self._open.update(e.key for e in endings)

    def done(self, endings: list[Ending]) -> None:
        """``endings`` are committed (or gone for good)."""
        with self._lock:
            self._open.difference_update(e.key for e in endings)

    def park(self, endings: list[Ending]) -> None:
        """Keep ``endings`` (those still to be replied to) for the next try; the rest are done."""
        with self._lock:
            for e in endings:
                self._open.discard(e.key)
                if not e.gone:
                    self._parked[e.key] = e

    def take(self) -> list[Ending]:
        """Every parked ending, now the caller's to commit (or park again); open again meanwhile."""
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
            return key in self._open or key in self._parked
