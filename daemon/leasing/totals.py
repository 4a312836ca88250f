"""Agents' lifetime LLM totals (the ``usage`` collection), added up in memory and written in one go.

Every answered LLM call adds its tokens and one call to its agent's totals.
Written per batch of answers, that is a write on the path of every reply; the
totals only inform the operator (``aiosd agents show``: the quotas that refuse
calls are counted by :mod:`aiosd.daemon.access`), so they are added up here and
written by :meth:`UsageTotals.write` every
:data:`~aiosd.daemon.runtime.wiring.CHARGE_INTERVAL` and at shutdown: one
update for each agent with calls since the last write. A crash loses
the last interval's totals, as it loses the last token charges. An update
that fails is tried again with the next write (one the server applied before
its connection broke is then counted twice: the totals only inform).
"""

from __future__ import annotations

import threading
from datetime import datetime

from pymongo.collection import Collection
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from aiosd.daemon.access.spending import Spent, tally
from aiosd.daemon.store import Doc
from aiosd.sdk.protocol import utcnow


class UsageTotals:
    """Lifetime LLM totals per agent, written periodically (thread-safe)."""

    def __init__(self, collection: Collection[Doc]) -> None:
        self._col = collection
        self._lock = threading.Lock()
        self._unwritten: Spent = {}

    def add(self, spent: Spent) -> None:
        """Count ``spent`` towards the agents' totals (written by the next :meth:`write`)."""
        with self._lock:
            _merge(self._unwritten, spent)

    def write(self) -> None:
        """Write what was added since the last write (one update per agent); what fails goes again next time."""
        with self._lock:
            spent, self._unwritten = self._unwritten, {}
        failed: Spent = {}
        error: PyMongoError | None = None
        now = utcnow()
        for agent, (usage, calls) in spent.items():
            if isinstance(error, ConnectionFailure):  # the store is out of reach: keep the rest untried
                failed[agent] = (usage, calls)
                continue
            try:
                self._write_one(agent, {**usage.model_dump(), "llm_calls": calls}, now)
            except PyMongoError as exc:
                failed[agent], error = (usage, calls), exc
        if error is not None:
            self.add(failed)
            raise error

    def _write_one(self, agent: str, amounts: Doc, now: datetime) -> None:
        update = {"$inc": amounts, "$set": {"updated_at": now}}
        try:
            self._col.update_one({"_id": agent}, update, upsert=True)
        except DuplicateKeyError:
            # Another scheduler created the document first: it exists now.
            self._col.update_one({"_id": agent}, update)


def _merge(into: Spent, spent: Spent) -> None:
    for agent, (usage, calls) in spent.items():
        tally(into, agent, usage, calls)
