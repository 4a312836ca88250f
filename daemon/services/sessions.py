"""Sessions (the ``context.*`` syscalls): conversation histories kept in MongoDB.

One document per session, ``_id = <agent>/<session>``, holding its messages.
Appends are guarded by a version counter so concurrent appends never lose
one another. ``llm.chat`` with a session reads the history when the call is
queued (the prompt is then fixed, so time slices resume the same tokens) and
appends the call's messages and the answer when it completes.

Truncation rule: a model sees at most its context. The history is cut from
the oldest end, keeping every system message and the call's own messages,
until the estimated prompt (characters / 3, rounded up, plus 4 per message —
deliberately generous for English text) plus ``max_tokens`` fits the
smallest context length among live workers (2048 when none is known).
"""

from __future__ import annotations

import threading
import uuid
from math import ceil
from typing import Any

from pymongo import DESCENDING, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from aiosd.daemon.errors import NotFound, SyscallFailed
from aiosd.daemon.services.context import CallContext
from aiosd.daemon.store import Doc
from aiosd.sdk.context import (
    ContextAppendArgs,
    ContextCreateArgs,
    ContextForkArgs,
    ContextListArgs,
    ContextRef,
    Session,
    SessionInfo,
    SessionList,
)
from aiosd.sdk.protocol import ErrorCode, utcnow

DEFAULT_CONTEXT = 2048
APPEND_RETRIES = 20
Message = dict[str, Any]


class SessionService:
    """Serves ``context.*`` and the session side of ``llm.chat``."""

    def __init__(self, collection: Collection[Doc]) -> None:
        self._col = collection
        # Some MongoDB-compatible servers (FerretDB) do not apply a guarded
        # update atomically; serialising appends in-process keeps them exact
        # for one scheduler, and MongoDB keeps them exact across schedulers.
        self._append_lock = threading.Lock()

    # -- syscalls ----------------------------------------------------------------

    def create(self, ctx: CallContext, args: ContextCreateArgs) -> SessionInfo:
        """``context.create``."""
        sid = args.session or _new_id()
        return self._insert_new(
            _new_doc(ctx.agent, sid, [m.model_dump(exclude_none=True) for m in args.messages], args.metadata)
        )

    def get(self, ctx: CallContext, args: ContextRef) -> Session:
        """``context.get``."""
        doc = self._load(ctx.agent, args.session)
        return Session(**_info(doc).model_dump(), messages=doc["messages"])

    def append(self, ctx: CallContext, args: ContextAppendArgs) -> SessionInfo:
        """``context.append``."""
        self._load(ctx.agent, args.session)
        return _info(self.extend(ctx.agent, args.session, [m.model_dump(exclude_none=True) for m in args.messages]))

    def fork(self, ctx: CallContext, args: ContextForkArgs) -> SessionInfo:
        """``context.fork``: an independent copy."""
        source = self._load(ctx.agent, args.session)
        sid = args.new_session or _new_id()
        doc = _new_doc(ctx.agent, sid, list(source["messages"]), dict(source.get("metadata") or {}))
        doc["forked_from"] = args.session
        return self._insert_new(doc)

    def delete(self, ctx: CallContext, args: ContextRef) -> SessionInfo:
        """``context.delete``."""
        doc = self._load(ctx.agent, args.session)
        self._col.delete_one({"_id": doc["_id"]})
        return _info(doc)

    def list_sessions(self, ctx: CallContext, args: ContextListArgs) -> SessionList:
        """``context.list``."""
        docs = self._col.find({"agent": ctx.agent}, {"messages": 0}).sort("updated_at", DESCENDING).limit(args.limit)
        return SessionList(sessions=[_info(d) for d in docs])

    # -- llm.chat ----------------------------------------------------------------

    def history(self, agent: str, session: str) -> list[Message]:
        """The stored messages of a session (empty for a session not created yet)."""
        doc = self._col.find_one({"_id": _key(agent, session)}, {"messages": 1})
        return list(doc["messages"]) if doc else []

    def extend(self, agent: str, session: str, messages: list[Message]) -> Doc:
        """Append ``messages``, creating the session if needed; safe against concurrent appends."""
        with self._append_lock:
            return self._extend(_key(agent, session), agent, session, messages)

    def _extend(self, key: str, agent: str, session: str, messages: list[Message]) -> Doc:
        for _ in range(APPEND_RETRIES):
            doc = self._col.find_one({"_id": key}, {"version": 1})
            if doc is None:
                try:
                    new = _new_doc(agent, session, messages, {})
                    self._col.insert_one(new)
                    return new
                except DuplicateKeyError:
                    continue
            updated = self._col.find_one_and_update(
                {"_id": key, "version": doc["version"]},
                {
                    "$push": {"messages": {"$each": messages}},
                    "$inc": {"version": 1, "length": len(messages)},
                    "$set": {"updated_at": utcnow()},
                },
                return_document=ReturnDocument.AFTER,
            )
            if updated is not None:
                return updated
        raise SyscallFailed(f"session {session!r} is changing too fast to append to", ErrorCode.CONFLICT)

    def _insert_new(self, doc: Doc) -> SessionInfo:
        try:
            self._col.insert_one(doc)
        except DuplicateKeyError:
            raise SyscallFailed(f"session {doc['session']!r} already exists", ErrorCode.CONFLICT) from None
        return _info(doc)

    def _load(self, agent: str, session: str) -> Doc:
        doc = self._col.find_one({"_id": _key(agent, session)})
        if doc is None:
            raise NotFound(f"no session {session!r}")
        return doc


def fit(history: list[Message], own: list[Message], context_length: int, max_tokens: int) -> list[Message]:
    """Apply the truncation rule (module doc): the messages a call with a session sends."""
    budget = (context_length or DEFAULT_CONTEXT) - max_tokens - sum(_estimate(m) for m in own)
    system = [m for m in history if m.get("role") == "system"]
    budget -= sum(_estimate(m) for m in system)
    kept: list[Message] = []
    for message in reversed([m for m in history if m.get("role") != "system"]):
        cost = _estimate(message)
        if cost > budget:
            break
        kept.append(message)
        budget -= cost
    return [*system, *reversed(kept), *own]


def _estimate(message: Message) -> int:
    return ceil(len(message.get("content") or "") / 3) + 4


def _key(agent: str, session: str) -> str:
    return f"{agent}/{session}"


def _new_id() -> str:
    return "s_" + uuid.uuid4().hex[:16]


def _new_doc(agent: str, session: str, messages: list[Message], metadata: dict[str, Any]) -> Doc:
    now = utcnow()
    return {
        "_id": _key(agent, session),
        "agent": agent,
        "session": session,
        "messages": messages,
        "metadata": metadata,
        "version": 0,
        "length": len(messages),
        "created_at": now,
        "updated_at": now,
        "forked_from": None,
    }


def _info(doc: Doc) -> SessionInfo:
    return SessionInfo(
        session=doc["session"],
        length=int(doc.get("length") or 0),
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
        forked_from=doc.get("forked_from"),
        metadata=doc.get("metadata") or {},
    )
