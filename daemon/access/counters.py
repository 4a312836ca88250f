"""Atomic per-agent counters: rate windows, usage per quota period, memory held.

Each counter is a small document (``_id`` = ``agent:kind:window``) changed
only by single-document ``$inc`` updates, so several scheduler threads (or
processes) never lose a count. A limit is enforced in the same update: the
filter only matches while the counter is below the limit, so "check then
increment" cannot race. Window documents carry ``expires_at`` and are pruned
by a periodic job, which keeps the collection small: it is updated on every
syscall, and some servers scan a collection for every update.

FerretDB 1.x (the development server) runs an update as a query followed by
a separate write, so two concurrent ``$inc`` on one document can lose one
(measured: 200 concurrent increments left 59). Updates of one counter are
therefore also serialised inside the process (striped locks): exact with any
number of scheduler threads on every server, and across processes on MongoDB,
whose single-document updates are atomic.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from aiosd.daemon.access.policy import Period
from aiosd.daemon.store import Doc
from aiosd.sdk.protocol import utcnow

#: The collection of counters.
COUNTERS = "counters"

#: Fields of a period document; every write touches all of them so each exists.
PERIOD_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "llm_calls")
MEMORY_FIELDS = ("notes", "bytes")
_STRIPES = 64


@dataclass(frozen=True)
class Window:
    """One counting window of one agent."""

    key: str
    label: str
    expires_at: datetime


def rate_window(agent: str, seconds: int, now: datetime | None = None) -> Window:
    """The fixed rate-limit window ``now`` falls in."""
    ts = (now or utcnow()).timestamp()
    index = int(ts // seconds)
    end = datetime.fromtimestamp((index + 1) * seconds, UTC)
    return Window(f"{agent}:rate{seconds}:{index}", str(index), end + timedelta(seconds=seconds))


def period_window(agent: str, period: Period, now: datetime | None = None) -> Window:
    """The quota period ``now`` falls in; kept one extra period so the last one stays visible."""
    t = (now or utcnow()).astimezone(UTC)
    if period == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        label, end = start.strftime("%Y-%m-%dT%H"), start + timedelta(hours=1)
        keep = end + timedelta(hours=1)
    elif period == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        label, end = start.strftime("%Y-%m-%d"), start + timedelta(days=1)
        keep = end + timedelta(days=1)
    else:
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        label, end = start.strftime("%Y-%m"), _next_month(start)
        keep = _next_month(end)
    return Window(f"{agent}:{period}:{label}", label, keep)


def memory_key(agent: str) -> str:
    """The (never expiring) document counting an agent's memory."""
    return f"{agent}:memory"


def _next_month(t: datetime) -> datetime:
    return t.replace(year=t.year + 1, month=1) if t.month == 12 else t.replace(month=t.month + 1)


class Counters:
    """The ``counters`` collection."""

    def __init__(self, collection: Collection[Doc]) -> None:
        self._col = collection
        self._locks = [threading.Lock() for _ in range(_STRIPES)]

    def _lock(self, key: str) -> threading.Lock:
        return self._locks[zlib.crc32(key.encode()) % _STRIPES]

    def reserve(self, key: str, amounts: dict[str, int], limits: dict[str, int | None], extra: Doc) -> Doc | None:
        """Add ``amounts`` unless a limited field would pass its limit; the document after, or ``None``.

        ``extra`` is set when the document is created (agent, kind, expiry).
        """
        query: Doc = {"_id": key}
        for field, amount in amounts.items():
            limit = limits.get(field)
            if limit is not None and amount > 0:
                if amount > limit:
                    return None
                query[field] = {"$lte": limit - amount}
        update = {"$inc": amounts, "$setOnInsert": extra}
        with self._lock(key):
            for _ in range(2):
                try:
                    return self._col.find_one_and_update(
                        query, update, upsert=True, return_document=ReturnDocument.AFTER
                    )
                except DuplicateKeyError:
                    # The document exists and is at its limit (the upsert tried to create it),
                    # or another process created it first: the second try tells which.
                    continue
        return None

    def add(self, key: str, amounts: dict[str, int], extra: Doc) -> None:
        """Add ``amounts`` (negative to give back), creating the document if needed."""
        update: Doc = {"$inc": amounts, "$setOnInsert": extra} if extra else {"$inc": amounts}
        with self._lock(key):
            try:
                self._col.update_one({"_id": key}, update, upsert=True)
            except DuplicateKeyError:
                self._col.update_one({"_id": key}, {"$inc": amounts})

    def set(self, key: str, values: dict[str, int], extra: Doc) -> None:
        """Set ``values`` outright (a recount), creating the document if needed."""
        with self._lock(key):
            self._col.update_one({"_id": key}, {"$set": values, "$setOnInsert": extra}, upsert=True)

    def get(self, key: str) -> Doc | None:
        """One counter document."""
        return self._col.find_one({"_id": key})

    def of_agent(self, agent: str) -> list[Doc]:
        """Every counter of ``agent``."""
        return list(self._col.find({"agent": agent}).sort("_id", 1))

    def forget(self, agent: str) -> int:
        """Remove every counter of ``agent`` (agent removed)."""
        return int(self._col.delete_many({"agent": agent}).deleted_count)

    def prune(self, now: datetime | None = None) -> int:
        """Drop windows that ended; return how many."""
        return int(self._col.delete_many({"expires_at": {"$lt": now or utcnow()}}).deleted_count)

    def ensure_indexes(self) -> None:
        """Indexes for the per-agent listing and the prune job."""
        self._col.create_index([("agent", 1)])
        self._col.create_index([("expires_at", 1)])


def period_amounts(**values: int) -> dict[str, int]:
    """An increment touching every period field (zeros where not given)."""
    return {f: values.get(f, 0) for f in PERIOD_FIELDS}
