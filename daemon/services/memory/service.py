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
from typing import Any, Protocol

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from aiosd.daemon.errors import Denied, NotFound
from aiosd.daemon.services.context import CallContext
from aiosd.daemon.services.memory.ranking import rank
from aiosd.daemon.store import Doc
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

    def release(self, agent: str, notes: int, nbytes: int) -> None: ...


class MemoryService:
    """Serves the ``memory.*`` syscalls."""

    def __init__(self, collection: Collection[Doc], guard: MemoryGuard | None = None) -> None:
        self._col = collection
        self._guard = guard

    def _visible(self, reader: str, owner: str) -> bool:
        return reader == owner or (self._guard is not None and self._guard.can_read(reader, owner))

    def add(self, ctx: CallContext, args: MemoryAddArgs) -> NoteRef:
        """``memory.add``."""
        note_id = "n_" + hashlib.sha256(f"{ctx.agent}\0{ctx.call_id}".encode()).hexdigest()[:24]
        now = utcnow()
        doc: Doc = {
            "_id": note_id,
            "agent": ctx.agent,
            "content": args.content,
            "tags": list(args.tags),
            "metadata": dict(args.metadata),
            "created_at": now,
            "updated_at": now,
            "deleted": False,
        }
        size = _size(args.content)
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
