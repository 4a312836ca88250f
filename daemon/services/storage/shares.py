"""Shares of storage namespaces: which agent or group may read or write which paths.

One small document per owner that shares anything (``storage_shares``,
``_id`` = the owner), so deciding an access to another agent's file is a
single ``_id`` find. A share's ``path`` covers the file of that name and
everything under it as a directory: ``/docs`` and ``/docs/`` both cover
``/docs/a.txt`` but never ``/docs-private/x`` (matching is by whole
segments), and ``/`` covers the whole namespace. ``write`` includes read.

Updates of one owner's document are serialised in-process (FerretDB applies an
update as a read and a separate write) and guarded by a revision, so schedulers
sharing a MongoDB cannot lose one another's change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from collections.abc import Collection as Names
from typing import Literal

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from aiosd.daemon.errors import NotFound, SyscallFailed
from aiosd.daemon.store import Doc
from aiosd.sdk.protocol import ErrorCode, utcnow

SHARES = "storage_shares"
#: Shares one owner may hold at once (keeps the document, read on every shared access, small).
MAX_SHARES = 256
Mode = Literal["read", "write"]


def _root(path: str) -> str:
    """A share path without its trailing ``/`` (``/`` stays ``/``): the form shares are compared in."""
    return path.rstrip("/") or "/"


def covers(share_path: str, path: str) -> bool:
    """Whether a share of ``share_path`` covers the file ``path`` (by whole segments)."""
    root = _root(share_path)
    return root == "/" or path == root or path.startswith(root + "/")


def grants(share: Doc, reader: str, groups: Names[str], path: str, mode: Mode) -> bool:
    """Whether one share lets ``reader`` (a member of ``groups``) ``mode``-access ``path``."""
    grantee = share.get("agent") == reader or (share.get("group") is not None and share["group"] in groups)
    allowed = share["mode"] == "write" or mode == "read"
    return grantee and allowed and covers(share["path"], path)


def reaches(share: Doc, reader: str, groups: Names[str]) -> bool:
    """Whether ``share`` gives ``reader`` anything at all (for listing another agent's files)."""
    return share.get("agent") == reader or (share.get("group") is not None and share["group"] in groups)


class ShareStore:
    """The ``storage_shares`` collection."""

    def __init__(self, collection: Collection[Doc]) -> None:
        self._col = collection
        self._lock = threading.Lock()

    def of(self, owner: str) -> list[Doc]:
        """Every share of ``owner``'s namespace."""
        doc = self._col.find_one({"_id": owner})
        return list(doc["shares"]) if doc else []

    def add(self, owner: str, path: str, agent: str | None, group: str | None, mode: Mode) -> list[Doc]:
        """Share ``path`` (replacing the mode of an existing share for the same grantee); the shares after."""
        share: Doc = {"path": _root(path), "agent": agent, "group": group, "mode": mode, "created_at": utcnow()}

        def change(shares: list[Doc]) -> list[Doc]:
            kept = [s for s in shares if not _same(s, share)]
            if len(kept) >= MAX_SHARES:
                raise SyscallFailed(f"at most {MAX_SHARES} shares per agent: unshare some first", ErrorCode.CONFLICT)
            return [*kept, share]

        return self._update(owner, change)

    def remove(self, owner: str, path: str, agent: str | None, group: str | None) -> list[Doc]:
        """Withdraw the share of ``path`` with ``agent`` or ``group``; the shares after."""
        target: Doc = {"path": _root(path), "agent": agent, "group": group}

        def change(shares: list[Doc]) -> list[Doc]:
            kept = [s for s in shares if not _same(s, target)]
            if len(kept) == len(shares):
                who = f"agent {agent}" if agent else f"group {group}"
                raise NotFound(f"{path} is not shared with {who}")
            return kept

        return self._update(owner, change)

    def forget(self, owner: str) -> None:
        """Drop every share of ``owner`` (agent removed)."""
        with self._lock:
            self._col.delete_one({"_id": owner})

    def _update(self, owner: str, change: Callable[[list[Doc]], list[Doc]]) -> list[Doc]:
        with self._lock:
            doc = self._col.find_one({"_id": owner})
            shares = change(list(doc["shares"]) if doc else [])
            if doc is None:
                try:
                    self._col.insert_one({"_id": owner, "shares": shares, "rev": 1})
                except DuplicateKeyError:
                    raise SyscallFailed("the shares changed concurrently; retry", ErrorCode.CONFLICT) from None
            elif (
                self._col.update_one(
                    {"_id": owner, "rev": doc["rev"]}, {"$set": {"shares": shares, "rev": doc["rev"] + 1}}
                ).matched_count
                != 1
            ):
                raise SyscallFailed("the shares changed concurrently; retry", ErrorCode.CONFLICT)
            return shares


def _same(a: Doc, b: Doc) -> bool:
    return (a["path"], a.get("agent"), a.get("group")) == (b["path"], b.get("agent"), b.get("group"))
