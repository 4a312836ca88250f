"""Memory service: per-agent notes with add/get/update/delete/search.

Every query is scoped to the calling agent; another agent's notes can be
read (get, search with ``owner``) only when its policy shares them, through
the :class:`MemoryGuard`, which also enforces the memory quota. Updates and
deletes stay owner-only. Effects are idempotent per
syscall (a note's id derives from the syscall that created it; a delete
remembers which syscall deleted it) so re-running a syscall after a crash has
the effect once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from aiosd.daemon.errors import Denied, NotFound, QuotaExceeded
from aiosd.daemon.services.context import CallContext
from aiosd.daemon.services.memory.ranking import rank
from aiosd.daemon.services.memory.turns import Turns
from aiosd.daemon.store import DUPLICATE_KEY, Doc
from aiosd.sdk.protocol import utcnow
from aiosd.sdk.syscalls import (
    MemoryAddArgs,
    MemoryDeleteArgs,
    MemoryGetArgs,
    MemorySearchArgs,
    MemoryUpdateArgs,
    Note,
    NoteRef,
    ScoredNote,
    SearchResult,
)

#: Upper bound on notes ranked per search; the ranking is done in process.
SEARCH_SCAN_LIMIT = 5000


class MemoryGuard(Protocol):
    """Sharing and quota decisions the memory service asks for (see :mod:`.guard`)."""

    def can_read(self, reader: str, owner: str) -> bool: ...

    def reserve(self, agent: str, notes: int, nbytes: int) -> None: ...

    def recount(self, agent: str, notes: int, nbytes: int) -> None: ...

    def release(self, agent: str, notes: int, nbytes: int) -> None: ...


class MemoryService:
    """Serves the ``memory.*`` syscalls."""

    def __init__(self, collection: Collection[Doc], guard: MemoryGuard | None = None) -> None:
        self._col = collection
        self._guard = guard
        self._turns = Turns()  # a recount never sees a reservation without its note or the reverse

    def _visible(self, reader: str, owner: str) -> bool:
        return reader == owner or (self._guard is not None and self._guard.can_read(reader, owner))

    def add(self, ctx: CallContext, args: MemoryAddArgs) -> NoteRef:
        """``memory.add``."""
        doc = _note_doc(ctx, args)
        note_id = doc["_id"]
        size = _size(args.content)
        with self._turns.writing([ctx.agent]):
            if self._guard is not None:
                self._guard.reserve(ctx.agent, 1, size)
            try:
                self._col.insert_one(doc)
            except DuplicateKeyError:
                # The same syscall ran before a crash: its effect (and its quota share) already exists.
                self._release(ctx.agent, 1, size)
            except Exception:
                self._release(ctx.agent, 1, size)
                raise
        return NoteRef(id=note_id)

    def add_many(self, calls: list[tuple[CallContext, MemoryAddArgs]]) -> Sequence[NoteRef | Exception]:
        """``memory.add`` for a batch: one quota reservation per agent, one insert.

        When an agent's batch does not fit its quota, its notes are reserved one
        by one, so exactly as many are stored as the quota allows; the others
        fail with ``quota_exceeded``.
        """
        out: list[NoteRef | Exception | None] = [None] * len(calls)
        docs: list[tuple[int, Doc, int]] = []
        by_agent: dict[str, list[int]] = {}
        for i, (ctx, _) in enumerate(calls):
            by_agent.setdefault(ctx.agent, []).append(i)
        with self._turns.writing(by_agent):
            for agent, indexes in by_agent.items():
                sizes = {i: _size(calls[i][1].content) for i in indexes}
                for i in self._reserve_many(agent, sizes, out):
                    docs.append((i, _note_doc(*calls[i]), sizes[i]))
            if docs:
                self._insert_notes(docs)
        for i, doc, _ in docs:
            out[i] = NoteRef(id=doc["_id"])
        return [o if o is not None else RuntimeError("not served") for o in out]

    def _reserve_many(self, agent: str, sizes: dict[int, int], out: list[NoteRef | Exception | None]) -> list[int]:
        """Reserve quota for ``sizes`` (index -> bytes); the indexes that got it."""
        if self._guard is None:
            return list(sizes)
        try:
            self._guard.reserve(agent, len(sizes), sum(sizes.values()))
            return list(sizes)
        except QuotaExceeded:
            pass
        admitted = []
        for i, size in sizes.items():
            try:
                self._guard.reserve(agent, 1, size)
                admitted.append(i)
            except QuotaExceeded as exc:
                out[i] = exc
        return admitted

    def _insert_notes(self, docs: list[tuple[int, Doc, int]]) -> None:
        try:
            self._col.insert_many([doc for _, doc, _ in docs], ordered=False)
        except BulkWriteError as exc:
            failed = {int(e["index"]): int(e.get("code", 0)) for e in exc.details.get("writeErrors", [])}
            # A duplicate is the same syscall run before a crash: its effect (and quota share) exists.
            for n, (_, doc, size) in enumerate(docs):
                if n in failed:
                    self._release(doc["agent"], 1, size)
            if any(code != DUPLICATE_KEY for code in failed.values()):
                raise
        except Exception:
            for _, doc, size in docs:
                self._release(doc["agent"], 1, size)
            raise

    def recount(self, agent: str) -> None:
        """Make the agent's memory quota count its live notes exactly.

        A crash between reserving quota and storing a note leaves the count one
        note high; the scheduler recounts the agents that had memory syscalls in
        flight before it serves again. Reads every live note of the agent: a
        recovery step, never on the hot path.
        """
        if self._guard is None:
            return
        with self._turns.recounting(agent):
            notes = nbytes = 0
            for doc in self._col.find({"agent": agent, "deleted": False}, {"content": 1}):
                notes += 1
                nbytes += _size(doc["content"])
            self._guard.recount(agent, notes, nbytes)

    def _release(self, agent: str, notes: int, nbytes: int) -> None:
        if self._guard is not None and (notes or nbytes):
            self._guard.release(agent, notes, nbytes)

    def get(self, ctx: CallContext, args: MemoryGetArgs) -> Note:
        """``memory.get``."""
        doc = self._col.find_one({"_id": args.id, "deleted": False})
        if doc is None or not self._visible(ctx.agent, doc["agent"]):
            raise NotFound(f"no note {args.id!r} in this agent's memory (or shared with it)")
        return _note(doc)

    def update(self, ctx: CallContext, args: MemoryUpdateArgs) -> Note:
        """``memory.update``."""
        with self._turns.writing([ctx.agent]):
            return self._update(ctx, args)

    def _update(self, ctx: CallContext, args: MemoryUpdateArgs) -> Note:
        changes: Doc = {k: v for k, v in args.model_dump(exclude={"id"}).items() if v is not None}
        changes["updated_at"] = utcnow()
        query = {"_id": args.id, "agent": ctx.agent, "deleted": False}
        grow = 0
        if args.content is not None and self._guard is not None:
            before = self._col.find_one(query, {"content": 1})
            if before is None:
                raise NotFound(f"no note {args.id!r} in this agent's memory")
            grow = _size(args.content) - _size(before["content"])
            if grow > 0:
                self._guard.reserve(ctx.agent, 0, grow)
        doc = self._col.find_one_and_update(query, {"$set": changes}, return_document=ReturnDocument.AFTER)
        if doc is None:
            self._release(ctx.agent, 0, max(grow, 0))
            raise NotFound(f"no note {args.id!r} in this agent's memory")
        if grow < 0:
            self._release(ctx.agent, 0, -grow)
        return _note(doc)

    def delete(self, ctx: CallContext, args: MemoryDeleteArgs) -> NoteRef:
        """``memory.delete`` (soft: the record stays, marked with the deleting syscall)."""
        with self._turns.writing([ctx.agent]):
            return self._delete(ctx, args)

    def _delete(self, ctx: CallContext, args: MemoryDeleteArgs) -> NoteRef:
        before = self._col.find_one_and_update(
            {"_id": args.id, "agent": ctx.agent, "deleted": False},
            {"$set": {"deleted": True, "deleted_by": ctx.call_id, "updated_at": utcnow()}},
        )
        if before is not None:
            self._release(ctx.agent, 1, _size(before["content"]))
        elif not self._col.find_one({"_id": args.id, "agent": ctx.agent, "deleted_by": ctx.call_id}):
            raise NotFound(f"no note {args.id!r} in this agent's memory")
        return NoteRef(id=args.id)

    def search(self, ctx: CallContext, args: MemorySearchArgs) -> SearchResult:
        """``memory.search``: BM25 ranking over the notes (see :mod:`.ranking`), with filters."""
        owner = args.owner or ctx.agent
        if not self._visible(ctx.agent, owner):
            raise Denied(f"agent {owner!r} does not share its memory with {ctx.agent!r}")
        query: Doc = {"agent": owner, "deleted": False}
        if args.tags:
            query["tags"] = {"$all": list(args.tags)}
        created: Doc = {}
        if args.created_after is not None:
            created["$gte"] = args.created_after
        if args.created_before is not None:
            created["$lt"] = args.created_before
        if created:
            query["created_at"] = created
        docs = list(self._col.find(query).limit(SEARCH_SCAN_LIMIT))
        scored = rank(args.query, docs)
        hits = [ScoredNote(**_note(d).model_dump(), score=round(s, 6)) for s, d in scored[: args.limit]]
        return SearchResult(results=hits)


def _note(doc: Doc) -> Note:
    fields: dict[str, Any] = {k: doc[k] for k in ("content", "tags", "metadata", "created_at", "updated_at")}
    return Note(id=doc["_id"], owner=doc.get("agent"), **fields)


def _size(content: str) -> int:
    """Bytes a note's content counts against the memory quota."""
    return len(content.encode("utf-8"))


def _note_doc(ctx: CallContext, args: MemoryAddArgs) -> Doc:
    """A new note; its id derives from the syscall, so running the syscall again finds it."""
    now = utcnow()
    return {
        "_id": "n_" + hashlib.sha256(f"{ctx.agent}\0{ctx.call_id}".encode()).hexdigest()[:24],
        "agent": ctx.agent,
        "content": args.content,
        "tags": list(args.tags),
        "metadata": dict(args.metadata),
        "created_at": now,
        "updated_at": now,
        "deleted": False,
    }
