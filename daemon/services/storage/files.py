"""Versioned files in MongoDB: a small head per file, insert-only version documents.

* ``storage_versions`` (large, insert-only, read by ``_id``): one document per
  version, ``_id = <owner><path>@<n>`` (e.g. ``alice/notes/a.txt@3``), with
  its content inline or a GridFS blob id (:mod:`.blobs`).
* ``storage_heads`` (small documents, the only ones updated): one per file,
  ``_id = <owner><path>``, holding the current version, the deleted flag and
  the list of *kept* versions (at most the policy's N) with their sizes. The
  head is the commit point: a version exists for readers once its head lists
  it, so a version document left by a crash is never visible. A purge leaves
  the head as a tombstone, so the version numbers of a path are never reused.
* ``storage_trash`` (small): versions no head lists any more (pruned or
  purged). Their bytes are released at once; :meth:`FileStore.sweep` deletes
  the documents and blobs in batches. On the development server every delete
  scans the whole collection, so one batched delete per sweep instead of one
  per write keeps writes fast there; on MongoDB it costs nothing.

Changes of one file are serialised by an in-process lock (FerretDB applies a
guarded update as a read and a separate write), and every head write is also
guarded by the head's revision, so schedulers sharing a MongoDB never
overwrite each other's commit: the loser gets ``conflict``.
"""

from __future__ import annotations

import hashlib
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from aiosd.daemon.errors import NotFound, SyscallFailed
from aiosd.daemon.services.storage.blobs import Blobs
from aiosd.daemon.store import Doc
from aiosd.sdk.protocol import ErrorCode, utcnow

HEADS, VERSIONS, TRASH = "storage_heads", "storage_versions", "storage_trash"
#: Fields of a kept-version entry in a head (and of its version document).
ENTRY_FIELDS = ("v", "size", "sha256", "content_type", "encoding", "created_at", "author", "call", "restored_from")
SWEEP_BATCH = 500
_STRIPES = 64
_MAX_SKIPS = 100


class Quota(Protocol):
    """The owner's storage quota, in bytes of kept versions."""

    def reserve(self, nbytes: int) -> None: ...

    def release(self, nbytes: int) -> None: ...


@dataclass(frozen=True)
class NewVersion:
    """Content and facts of a version about to be written."""

    data: bytes
    content_type: str
    encoding: str
    author: str
    call: str  # "<agent>/<message_id>" of the syscall writing it: makes a re-run idempotent
    restored_from: int | None = None


@dataclass(frozen=True)
class Committed:
    """A head after a write, the new version's entry and the versions pruned by it."""

    head: Doc
    entry: Doc
    pruned: list[int]


def head_id(owner: str, path: str) -> str:
    """``_id`` of a file's head; ``path`` is canonical (starts with ``/``), agent names hold no ``/``."""
    return f"{owner}{path}"


def version_id(owner: str, path: str, version: int) -> str:
    """``_id`` of one version document."""
    return f"{owner}{path}@{version}"


def gone(head: Doc | None) -> bool:
    """Whether a head is missing or a purged file's tombstone."""
    return head is None or bool(head.get("purged"))


def live_version(head: Doc | None) -> int:
    """The current version of a live file, 0 for a missing or deleted one."""
    return 0 if head is None or head.get("deleted") else int(head["current"])


def find_entry(head: Doc, version: int) -> Doc | None:
    """The kept-version entry for ``version``."""
    return next((e for e in head["versions"] if e["v"] == version), None)


class FileStore:
    """Heads, versions and their content."""

    def __init__(self, db: Database[Doc], blobs: Blobs) -> None:
        self._heads = db[HEADS]
        self._versions = db[VERSIONS]
        self._trash = db[TRASH]
        self._blobs = blobs
        self._locks = [threading.Lock() for _ in range(_STRIPES)]

    def _lock(self, hid: str) -> threading.Lock:
        return self._locks[zlib.crc32(hid.encode()) % _STRIPES]

    # -- reads -------------------------------------------------------------------

    def head(self, owner: str, path: str) -> Doc | None:
        """A file's head (deleted ones too), or ``None``."""
        return self._heads.find_one({"_id": head_id(owner, path)})

    def load(self, head: Doc, entry: Doc) -> bytes:
        """The content of a kept version, checked against its sha256."""
        doc = self._versions.find_one({"_id": version_id(head["owner"], head["path"], entry["v"])})
        if doc is None or doc.get("call") != entry["call"]:
            raise SyscallFailed(f"version {entry['v']} of {head['path']} is missing from the store", ErrorCode.INTERNAL)
        data = self._blobs.load(doc)
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise SyscallFailed(f"version {entry['v']} of {head['path']} fails its sha256 check", ErrorCode.INTERNAL)
        return data

    def heads(self, owner: str, prefix: str, include_deleted: bool) -> Iterator[Doc]:
        """Heads of ``owner`` whose path starts with ``prefix``, in path order."""
        query: Doc = {"_id": {"$regex": "^" + _escape(head_id(owner, prefix))}}
        if not include_deleted:
            query["deleted"] = False
        else:
            query["purged"] = {"$ne": True}
        return iter(self._heads.find(query).sort("_id", 1))

    # -- writes ------------------------------------------------------------------

    def commit(
        self, owner: str, path: str, new: NewVersion, keep: int, quota: Quota, if_version: int | None = None
    ) -> Committed:
        """Write ``new`` as the next version, keeping the last ``keep``; idempotent per ``new.call``."""
        hid = head_id(owner, path)
        with self._lock(hid):
            head = self._heads.find_one({"_id": hid})
            replayed = _replayed(head, new.call)
            if replayed is not None and head is not None:
                return Committed(head, replayed, [])
            if if_version is not None and live_version(head) != if_version:
                raise SyscallFailed(
                    f"{path} is at version {live_version(head)}, not {if_version} (0 means no live file)",
                    ErrorCode.CONFLICT,
                )
            kept = list(head["versions"]) if head else []
            pruned = kept[: max(len(kept) + 1 - keep, 0)]
            grow = len(new.data) - sum(int(e["size"]) for e in pruned)
            if grow > 0:
                quota.reserve(grow)
            try:
                entry = self._insert_version(owner, path, (head["current"] if head else 0) + 1, new)
                after = self._save_head(owner, path, head, [*kept[len(pruned) :], entry])
            except BaseException:
                # Nothing was committed: give the reservation back (the version document, if any, is an orphan).
                if grow > 0:
                    quota.release(grow)
                raise
            if grow < 0:
                quota.release(-grow)
        self._discard(owner, path, pruned)
        return Committed(after, entry, [int(e["v"]) for e in pruned])

    def mark_deleted(self, owner: str, path: str, call: str) -> Doc:
        """Soft-delete a live file (its versions stay, restorable); idempotent per ``call``."""
        hid = head_id(owner, path)
        with self._lock(hid):
            head = self._heads.find_one({"_id": hid})
            if head is not None and head.get("deleted") and head.get("deleted_by") == call:
                return head
            if head is None or head.get("deleted"):
                raise NotFound(f"no live file {path}" + (" (already deleted)" if not gone(head) else ""))
            after = {**head, "deleted": True, "deleted_by": call, "deleted_at": utcnow(), "rev": head["rev"] + 1}
            self._replace(head, after)
            return after

    def purge(self, owner: str, path: str, call: str, quota: Quota) -> tuple[Doc, int]:
        """Remove every version for good and release their bytes; the tombstone head and the bytes released.

        The head stays as a tombstone (no versions, ``purged``) so version numbers
        of a path are never reused: a reader holding "version 3" never gets other content.
        """
        hid = head_id(owner, path)
        with self._lock(hid):
            head = self._heads.find_one({"_id": hid})
            if head is not None and head.get("purged") and head.get("deleted_by") == call:
                return head, int(head.get("purged_bytes") or 0)  # this syscall re-run after a crash
            if head is None or head.get("purged"):
                raise NotFound(f"no file {path}")
            after = {
                **head,
                "versions": [],
                "bytes": 0,
                "deleted": True,
                "purged": True,
                "purged_bytes": head["bytes"],
                "deleted_by": call,
                "deleted_at": utcnow(),
                "rev": head["rev"] + 1,
            }
            self._replace(head, after)
            quota.release(int(head["bytes"]))
        self._discard(owner, path, list(head["versions"]))
        return after, int(head["bytes"])

    def sweep_orphans(self) -> int:
        """Drop blobs left by writes that crashed before their version was committed."""
        return self._blobs.sweep_orphans(self._versions)

    def sweep(self, batch: int = SWEEP_BATCH) -> int:
        """Delete discarded versions and their blobs, a batch at a time; return how many."""
        trash = list(self._trash.find({}).limit(batch))
        if not trash:
            return 0
        ids = [d["_id"] for d in trash]
        blobs = [d["blob"] for d in self._versions.find({"_id": {"$in": ids}, "blob": {"$exists": True}}, {"blob": 1})]
        self._blobs.drop_many(blobs)
        self._versions.delete_many({"_id": {"$in": ids}})
        self._trash.delete_many({"_id": {"$in": ids}})
        return len(ids)

    # -- internals ---------------------------------------------------------------

    def _insert_version(self, owner: str, path: str, number: int, new: NewVersion) -> Doc:
        placed = self._blobs.place(new.data, head_id(owner, path))
        entry = _entry(number, new)
        for _ in range(_MAX_SKIPS):
            doc = {"_id": version_id(owner, path, entry["v"]), "owner": owner, "path": path, **entry, **placed}
            try:
                self._versions.insert_one(doc)
                self._blobs.committed(placed)
                return entry
            except DuplicateKeyError:
                existing = self._versions.find_one({"_id": doc["_id"]}, {"data": 0})
            if existing is not None and existing.get("call") == new.call:
                self._blobs.drop(placed)  # this very syscall stored it before a crash: keep that one
                return {k: existing.get(k) for k in ENTRY_FIELDS}
            # An uncommitted version of a crashed call (or of another scheduler's racing write)
            # holds this number: take the next one; the loser of a race fails at the head.
            entry["v"] += 1
        self._blobs.drop(placed)
        raise SyscallFailed(f"no free version number for {path}", ErrorCode.CONFLICT)

    def _save_head(self, owner: str, path: str, head: Doc | None, versions: list[Doc]) -> Doc:
        now = utcnow()
        total = sum(int(e["size"]) for e in versions)
        fields: Doc = {
            "current": versions[-1]["v"],
            "versions": versions,
            "bytes": total,
            "updated_at": now,
            "deleted": False,
            "deleted_by": None,
            "deleted_at": None,
            "purged": False,
        }
        if head is None:
            after: Doc = {
                "_id": head_id(owner, path),
                "owner": owner,
                "path": path,
                "created_at": now,
                "rev": 1,
                **fields,
            }
            try:
                self._heads.insert_one(after)
            except DuplicateKeyError:
                raise SyscallFailed(f"{path} was created concurrently; retry", ErrorCode.CONFLICT) from None
            return after
        after = {**head, **fields, "rev": head["rev"] + 1}
        if head.get("purged"):  # a new file on a purged path: only the version numbering carries on
            after.update(created_at=now, purged_bytes=0)
        self._replace(head, after)
        return after

    def _replace(self, head: Doc, after: Doc) -> None:
        if self._heads.replace_one({"_id": head["_id"], "rev": head["rev"]}, after).matched_count != 1:
            raise SyscallFailed(f"{head['path']} changed concurrently; retry", ErrorCode.CONFLICT)

    def _discard(self, owner: str, path: str, entries: list[Doc]) -> None:
        """Hand versions no head lists any more to :meth:`sweep` (after the commit: never a live one)."""
        for entry in entries:
            try:
                self._trash.insert_one({"_id": version_id(owner, path, int(entry["v"]))})
            except DuplicateKeyError:
                pass  # already discarded by a re-run


def _entry(number: int, new: NewVersion) -> Doc:
    return {
        "v": number,
        "size": len(new.data),
        "sha256": hashlib.sha256(new.data).hexdigest(),
        "content_type": new.content_type,
        "encoding": new.encoding,
        "created_at": utcnow(),
        "author": new.author,
        "call": new.call,
        "restored_from": new.restored_from,
    }


def _replayed(head: Doc | None, call: str) -> Doc | None:
    """The entry this syscall already committed (it is being re-run after a crash), if any."""
    if head is None:
        return None
    return next((e for e in head["versions"] if e.get("call") == call), None)


_REGEX_META = frozenset(".^$*+?()[]{}|\\")


def _escape(text: str) -> str:
    """``text`` as a regex literal; only metacharacters are escaped (RE2, used by some servers, refuses other escapes)."""
    return "".join("\\" + c if c in _REGEX_META else c for c in text)
