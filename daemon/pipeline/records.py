"""Syscall records: the durable state of every accepted syscall.

Two collections, split so that every update or delete touches a small one:

* ``syscalls`` holds *live* syscalls only: accepted and not yet answered
  (running, or completed with a reply not yet handed to the broker). Its ``_id`` is
  ``<agent>/<message_id>``, so a duplicate insert fails: that is what makes
  redelivery idempotent. A record leaves it once its reply is out.
* ``results`` is insert-only and read by ``_id``: one document per completed
  syscall with its reply. Inserting it is the commit point of a syscall; a
  second completion hits the unique ``_id`` and loses ("first completion wins").

Some MongoDB-compatible servers (FerretDB's SQLite handler among them) scan a
whole collection for every update or delete, so keeping the updated
collection small keeps the scheduler fast there, and costs nothing on MongoDB.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from aiosd.daemon.store import DUPLICATE_KEY, Doc
from aiosd.sdk.protocol import Reply, Request, utcnow


class State(str, Enum):
    """Where a syscall is in its life."""

    ACCEPTED = "accepted"
    COMPLETED = "completed"


@dataclass(frozen=True)
class Envelope:
    """An accepted request with the AMQP properties the reply needs."""

    agent: str
    message_id: str
    request: Request
    priority: int
    reply_to: str | None
    correlation_id: str
    received_at: datetime

    @property
    def key(self) -> str:
        """The record's ``_id``: message ids are unique per agent, not globally."""
        return record_key(self.agent, self.message_id)


def record_key(agent: str, message_id: str) -> str:
    """The ``_id`` of the record for ``message_id`` sent by ``agent``."""
    return f"{agent}/{message_id}"


class Records:
    """Reads and writes the ``syscalls`` (live) and ``results`` collections."""

    def __init__(self, live: Collection[Doc], results: Collection[Doc]) -> None:
        self._live = live
        self._results = results
        self._reader = ThreadPoolExecutor(max_workers=4, thread_name_prefix="aiosd-records")

    def insert_many(self, envs: list[Envelope]) -> tuple[list[Envelope], dict[str, Doc]]:
        """Store a batch of newly accepted syscalls: ``(new ones, {key: existing record})``.

        One unordered insert; the unique ``_id`` reports duplicates, so nothing is
        read first. One read by ``_id`` then finds which new ones were finished
        before (late duplicates: their live record is removed again), and one
        more reads the records the duplicates collided with. Of several copies
        of one call in the batch only the first is stored; the caller treats the
        others as duplicates of a call in progress.
        """
        firsts: dict[str, Envelope] = {}
        for env in envs:
            firsts.setdefault(env.key, env)
        envs = list(firsts.values())
        docs = [_record(env) for env in envs]
        colliding: set[str] = set()
        try:
            self._live.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            colliding = {docs[int(e["index"])]["_id"] for e in errors}
        existing: dict[str, Doc] = {}
        inserted = [env for env in envs if env.key not in colliding]
        if inserted:
            done = self._by_id(self._results, [env.key for env in inserted])
            if done:
                self._live.delete_many({"_id": {"$in": list(done)}})
                existing.update(done)
        if colliding:
            # A finished record answers the duplicate even before its live record is retired.
            existing.update(self._by_id(self._results, list(colliding)))
            running = [key for key in colliding if key not in existing]
            existing.update(self._by_id(self._live, running) if running else {})
        new = [env for env in inserted if env.key not in existing]
        fresh = {env.key: doc for env, doc in zip(envs, docs, strict=True)}
        for key in colliding:
            existing.setdefault(key, fresh[key])  # retired between the two reads: in progress
        return new, existing

    def complete_many(
        self, finished: list[tuple[Envelope, Reply]], again: bool = False
    ) -> list[tuple[Envelope, Reply]]:
        """Commit a batch of replies with one write; return those that won (first completion wins).

        ``again``: the same replies were tried before, so a stored reply equal
        to the one given is this batch's own (it won then).
        """
        if not finished:
            return []
        now = utcnow()
        docs = [
            {**_record(env), "state": State.COMPLETED.value, "reply": _dump(reply), "completed_at": now}
            for env, reply in finished
        ]
        try:
            self._results.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            lost = {int(e["index"]) for e in errors}
            if again:
                lost -= self._own(docs, lost)
            return [pair for i, pair in enumerate(finished) if i not in lost]
        return finished

    def _own(self, docs: list[Doc], lost: set[int]) -> set[int]:
        """Which of the ``lost`` writes found their own reply stored by an earlier try."""
        stored = self._by_id(self._results, [docs[i]["_id"] for i in lost])
        return {i for i in lost if (stored.get(docs[i]["_id"]) or {}).get("reply") == docs[i]["reply"]}

    def lookup(self, keys: list[str]) -> dict[str, Doc]:
        """The stored record of each of ``keys`` that has one: its result, or else its live record.

        The two reads run at once (one on a helper thread): a lone call waits for one round trip.
        """
        live = self._reader.submit(self._by_id, self._live, keys)
        found = self._by_id(self._results, keys)
        return {**live.result(), **found}

    def lookup_started(self, keys: list[str]) -> Lookup:
        """Start :meth:`lookup` on the helper threads; the caller goes on meanwhile."""
        live = self._reader.submit(self._by_id, self._live, keys)
        results = self._reader.submit(self._by_id, self._results, keys)
        return Lookup(frozenset(keys), live, results)

    def retire(self, keys: list[str]) -> None:
        """Replies reached the broker: remove their live records with one write."""
        if keys:
            self._live.delete_many({"_id": {"$in": keys}})

    def _by_id(self, collection: Collection[Doc], keys: list[str]) -> dict[str, Doc]:
        return {doc["_id"]: doc for doc in collection.find({"_id": {"$in": keys}})}

    def mark_unrecoverable(self, key: str, reason: str) -> None:
        """Keep a record recovery cannot read, out of recovery's way (an operator can inspect it)."""
        self._live.update_one({"_id": key}, {"$set": {"state": "unrecoverable", "error": reason}})

    def results_of(self, keys: list[str]) -> dict[str, Doc]:
        """The result documents of those of ``keys`` that completed, in one read."""
        return self._by_id(self._results, keys) if keys else {}

    def result(self, key: str) -> Doc | None:
        """The result document of a completed syscall."""
        return self._results.find_one({"_id": key})

    def get(self, agent: str, message_id: str) -> Doc | None:
        """The result, or else the live record, of ``agent``'s syscall ``message_id``."""
        key = record_key(agent, message_id)
        return self._results.find_one({"_id": key}) or self._live.find_one({"_id": key})

    def find_by_id(self, message_id: str, agent: str | None = None) -> list[Doc]:
        """Records with this message id (several agents may have used it)."""
        if agent is not None:
            doc = self.get(agent, message_id)
            return [doc] if doc else []
        query: Doc = {"id": message_id}
        found = {d["_id"]: d for d in self._live.find(query).limit(20)}
        found.update({d["_id"]: d for d in self._results.find(query).limit(20)})
        return list(found.values())

    def live(self, older_than: float = 0.0) -> Iterator[Doc]:
        """Live records accepted at least ``older_than`` seconds ago, oldest first.

        A live record whose result exists was completed but maybe not answered.
        """
        cutoff = utcnow() - timedelta(seconds=older_than)
        return iter(self._live.find({"accepted_at": {"$lte": cutoff}}).sort("accepted_at", 1))


def live_record(env: Envelope) -> Doc:
    """The live record stored for an accepted syscall (before its scheduling fields)."""
    return _record(env)


def _record(env: Envelope) -> Doc:
    req = env.request
    return {
        "_id": env.key,
        "id": env.message_id,
        "agent": env.agent,
        "syscall": req.syscall,
        "args": req.args,
        "session": req.session,
        "program": req.program,
        "background": req.task is not None,
        "deadline": req.deadline,
        "priority": env.priority,
        "reply_to": env.reply_to,
        "correlation_id": env.correlation_id,
        "state": State.ACCEPTED.value,
        "accepted_at": env.received_at,
    }


def _dump(reply: Reply) -> Doc:
    return reply.model_dump(mode="json")


def envelope_from_record(doc: Doc) -> Envelope:
    """Rebuild the envelope of a stored record (used by recovery)."""
    request = Request(
        syscall=doc["syscall"],
        args=doc.get("args") or {},
        session=doc.get("session"),
        program=doc.get("program"),
        deadline=doc.get("deadline"),
    )
    return Envelope(
        agent=doc["agent"],
        message_id=doc["id"],
        request=request,
        priority=int(doc.get("priority") or 0),
        reply_to=doc.get("reply_to"),
        correlation_id=doc.get("correlation_id") or doc["id"],
        received_at=doc["accepted_at"],
    )


def elapsed_ms(since: datetime, until: datetime | None = None) -> float:
    """Milliseconds between two aware datetimes."""
    return ((until or utcnow()) - since).total_seconds() * 1000.0


@dataclass(frozen=True)
class Lookup:
    """A :meth:`Records.lookup` under way: the keys it covers and its two reads."""

    keys: frozenset[str]
    live: Future[dict[str, Doc]]
    results: Future[dict[str, Doc]]

    def found(self) -> dict[str, Doc]:
        """Wait for both reads: the stored record of each key that has one (the result first)."""
        return {**self.live.result(), **self.results.result()}
