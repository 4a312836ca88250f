"""Storage service: the ``storage.*`` syscalls over versioned per-agent files.

Every agent has a namespace of files addressed by canonical paths (checked by
:mod:`aiosd.sdk.storage`; there is no host filesystem anywhere). Another
agent's file is reachable only by naming its ``owner`` *and* holding access:
a share made by the owner with ``storage.share`` (read, or write which
includes read) or an operator's policy grant with ``resources: [storage]``
(read). Group membership alone shares memory, not files: files are shared
with a group only by an explicit share to that group. Without a guard (no
access control wired) each agent reaches only its own files.

Every write is a new version; the owner's policy keeps the last
``storage_versions`` (older ones are pruned and their bytes released) and the
``storage_bytes`` quota counts every kept version. ``delete`` is soft (the
versions stay and still count) and undone by ``rollback``; ``delete`` with
``purge`` removes every version and frees the bytes. Writes by another agent
through a write share count against the owner, whose namespace holds them.
Layout and consistency: :mod:`.files`, :mod:`.blobs`, :mod:`.shares`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pymongo.database import Database

from aiosd.daemon.errors import Denied, NotFound, SyscallFailed
from aiosd.daemon.services.context import CallContext
from aiosd.daemon.services.storage.blobs import INLINE_MAX, Blobs
from aiosd.daemon.services.storage.files import Committed, FileStore, NewVersion, Quota, find_entry, gone
from aiosd.daemon.services.storage.shares import SHARES, ShareStore, grants, reaches
from aiosd.daemon.store import Doc
from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.protocol import ErrorCode
from aiosd.sdk.storage import (
    FileContent,
    FileDeleted,
    FileInfo,
    FileList,
    FileStat,
    FileVersion,
    FileWritten,
    Mode,
    Share,
    ShareList,
    StorageDeleteArgs,
    StorageListArgs,
    StoragePathArgs,
    StorageReadArgs,
    StorageRollbackArgs,
    StorageShareArgs,
    StorageUnshareArgs,
    StorageWriteArgs,
)

log = get_logger(__name__)

DEFAULT_VERSIONS = 10
#: Seconds between sweeps deleting pruned and purged versions.
STORAGE_SWEEP_INTERVAL = 5.0
TEXT_TYPE = "text/plain; charset=utf-8"
BINARY_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class StorageLimits:
    """An owner's storage limits (``None``: unlimited)."""

    versions: int = DEFAULT_VERSIONS
    file_bytes: int | None = None
    quota: int | None = None


class StorageGuard(Protocol):
    """Policy decisions the storage service asks for (see :mod:`.guard`)."""

    def limits(self, owner: str) -> StorageLimits: ...

    def grants_read(self, reader: str, owner: str) -> bool: ...

    def groups(self, agent: str) -> frozenset[str]: ...

    def known(self, agent: str) -> bool: ...

    def reserve(self, owner: str, nbytes: int) -> None: ...

    def release(self, owner: str, nbytes: int) -> None: ...


class _OwnerQuota:
    """The :class:`~.files.Quota` of one owner (unlimited without a guard)."""

    def __init__(self, guard: StorageGuard | None, owner: str) -> None:
        self._guard, self._owner = guard, owner

    def reserve(self, nbytes: int) -> None:
        if self._guard is not None:
            self._guard.reserve(self._owner, nbytes)

    def release(self, nbytes: int) -> None:
        if self._guard is not None:
            self._guard.release(self._owner, nbytes)


class StorageService:
    """Serves the ``storage.*`` syscalls."""

    def __init__(self, db: Database[Doc], guard: StorageGuard | None = None, inline_max: int = INLINE_MAX) -> None:
        self.files = FileStore(db, Blobs(db, inline_max))
        self._shares = ShareStore(db[SHARES])
        self._guard = guard

    # -- syscalls ----------------------------------------------------------------

    def write(self, ctx: CallContext, args: StorageWriteArgs) -> FileWritten:
        """``storage.write``: a new version (creates the file, or brings a deleted one back)."""
        owner = self._authorize(ctx, args.owner, args.path, "write")
        limits = self._limits(owner)
        if limits.file_bytes is not None and args.size() > limits.file_bytes:
            raise SyscallFailed(
                f"{args.path}: {args.size()} bytes is more than the {limits.file_bytes} bytes a file may have "
                f"(policy storage_file_bytes of {owner})",
                ErrorCode.TOO_LARGE,
            )
        content_type = args.content_type or (TEXT_TYPE if args.text is not None else BINARY_TYPE)
        new = NewVersion(args.content(), content_type, args.encoding(), ctx.agent, _call(ctx))
        done = self.files.commit(owner, args.path, new, limits.versions, self._quota(owner), args.if_version)
        return _written(done)

    def read(self, ctx: CallContext, args: StorageReadArgs) -> FileContent:
        """``storage.read``: the current version, or any kept one."""
        owner = self._authorize(ctx, args.owner, args.path, "read")
        head = self._head(owner, args.path)
        if args.version is None and head["deleted"]:
            raise NotFound(f"{args.path} is deleted: read a kept version, or restore it with storage.rollback")
        entry = self._entry(head, args.version or head["current"])
        text, b64 = _encode(self.files.load(head, entry), args.encoding or entry["encoding"], args.path, entry["v"])
        return FileContent(
            owner=owner,
            path=args.path,
            version=entry["v"],
            current=head["current"],
            size=entry["size"],
            sha256=entry["sha256"],
            content_type=entry["content_type"],
            created_at=entry["created_at"],
            text=text,
            base64=b64,
        )

    def stat(self, ctx: CallContext, args: StoragePathArgs) -> FileStat:
        """``storage.stat``: a file (deleted ones too) with its kept versions, newest first."""
        owner = self._authorize(ctx, args.owner, args.path, "read")
        head = self._head(owner, args.path)
        history = [_version(e) for e in reversed(head["versions"])]
        return FileStat(**_info(head).model_dump(), history=history)

    def list_files(self, ctx: CallContext, args: StorageListArgs) -> FileList:
        """``storage.list``: files under a prefix that the caller may read."""
        owner = args.owner or ctx.agent
        visible = self._visible(ctx.agent, owner)
        files: list[FileInfo] = []
        for head in self.files.heads(owner, args.prefix, args.include_deleted):
            if not visible(head["path"]):
                continue
            if len(files) == args.limit:
                return FileList(files=files, truncated=True)
            files.append(_info(head))
        return FileList(files=files, truncated=False)

    def delete(self, ctx: CallContext, args: StorageDeleteArgs) -> FileDeleted:
        """``storage.delete``: soft (restorable with ``storage.rollback``) or, with ``purge``, for good."""
        owner = self._authorize(ctx, args.owner, args.path, "write")
        if args.purge:
            head, released = self.files.purge(owner, args.path, _call(ctx), self._quota(owner))
            return FileDeleted(
                owner=owner, path=args.path, version=head["current"], purged=True, released_bytes=released
            )
        head = self.files.mark_deleted(owner, args.path, _call(ctx))
        return FileDeleted(owner=owner, path=args.path, version=head["current"], purged=False, released_bytes=0)

    def rollback(self, ctx: CallContext, args: StorageRollbackArgs) -> FileWritten:
        """``storage.rollback``: a kept version written again as a new version (restoring a deleted file)."""
        owner = self._authorize(ctx, args.owner, args.path, "write")
        head = self._head(owner, args.path)
        if args.version is None and not head["deleted"]:
            raise SyscallFailed(f"{args.path} is not deleted: name the version to roll back to", ErrorCode.INVALID_ARGS)
        entry = self._entry(head, args.version or head["current"])
        new = NewVersion(
            self.files.load(head, entry),
            entry["content_type"],
            entry["encoding"],
            ctx.agent,
            _call(ctx),
            restored_from=entry["v"],
        )
        return _written(self.files.commit(owner, args.path, new, self._limits(owner).versions, self._quota(owner)))

    def share(self, ctx: CallContext, args: StorageShareArgs) -> ShareList:
        """``storage.share``: let an agent or group read (or write) a path of the caller's namespace."""
        if args.agent == ctx.agent:
            raise SyscallFailed("an agent always has access to its own files", ErrorCode.INVALID_ARGS)
        if args.agent is not None and self._guard is not None and not self._guard.known(args.agent):
            raise NotFound(f"no agent {args.agent!r} is registered")
        return _share_list(self._shares.add(ctx.agent, args.path, args.agent, args.group, args.mode))

    def unshare(self, ctx: CallContext, args: StorageUnshareArgs) -> ShareList:
        """``storage.unshare``: withdraw a share; effective for the grantee's next call."""
        return _share_list(self._shares.remove(ctx.agent, args.path, args.agent, args.group))

    def sweep(self) -> int:
        """Housekeeping: delete pruned and purged versions (see :meth:`~.files.FileStore.sweep`)."""
        count = self.files.sweep()
        if count:
            log.info("storage_swept", versions=count)
        return count

    def sweep_orphans(self) -> int:
        """Housekeeping: drop blobs of writes that crashed mid-way (see :meth:`~.blobs.Blobs.sweep_orphans`)."""
        count = self.files.sweep_orphans()
        if count:
            log.warning("storage_orphans_dropped", blobs=count)
        return count

    # -- access ------------------------------------------------------------------

    def _authorize(self, ctx: CallContext, owner: str | None, path: str, mode: Mode) -> str:
        """The namespace to use; raise :class:`Denied` unless the caller may ``mode``-access ``path`` in it."""
        if owner is None or owner == ctx.agent:
            return ctx.agent
        if self._guard is not None:
            if mode == "read" and self._guard.grants_read(ctx.agent, owner):
                return owner
            groups = self._guard.groups(ctx.agent)
            if any(grants(s, ctx.agent, groups, path, mode) for s in self._shares.of(owner)):
                return owner
        raise Denied(f"agent {owner!r} does not share {path} with {ctx.agent!r} for {mode} access")

    def _visible(self, reader: str, owner: str) -> Callable[[str], bool]:
        """Which of ``owner``'s paths ``reader`` may list; :class:`Denied` if none at all."""
        if reader == owner or (self._guard is not None and self._guard.grants_read(reader, owner)):
            return _everything
        groups = self._guard.groups(reader) if self._guard is not None else frozenset()
        shares = [s for s in self._shares.of(owner) if reaches(s, reader, groups)]
        if not shares:
            raise Denied(f"agent {owner!r} shares no files with {reader!r}")
        return lambda path: any(grants(s, reader, groups, path, "read") for s in shares)

    def _limits(self, owner: str) -> StorageLimits:
        return self._guard.limits(owner) if self._guard is not None else StorageLimits()

    def _quota(self, owner: str) -> Quota:
        return _OwnerQuota(self._guard, owner)

    def _head(self, owner: str, path: str) -> Doc:
        head = self.files.head(owner, path)
        if head is None or gone(head):
            raise NotFound(f"no file {path} in the storage of {owner!r}")
        return head

    @staticmethod
    def _entry(head: Doc, version: int) -> Doc:
        entry = find_entry(head, version)
        if entry is None:
            kept = ", ".join(str(e["v"]) for e in head["versions"])
            raise NotFound(f"version {version} of {head['path']} is not kept (kept: {kept})")
        return entry


def _everything(path: str) -> bool:
    return True


def _call(ctx: CallContext) -> str:
    # Message ids are unique per agent only, and agents with a write share write into one namespace.
    return f"{ctx.agent}/{ctx.call_id}"


def _encode(data: bytes, encoding: str, path: str, version: int) -> tuple[str | None, str | None]:
    """``(text, base64)``: the content in the asked encoding."""
    if encoding == "base64":
        return None, base64.b64encode(data).decode("ascii")
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        raise SyscallFailed(
            f"version {version} of {path} is not UTF-8 text: read it with encoding 'base64'", ErrorCode.INVALID_ARGS
        ) from None


def _version(entry: Doc) -> FileVersion:
    return FileVersion(
        version=entry["v"],
        size=entry["size"],
        sha256=entry["sha256"],
        content_type=entry["content_type"],
        created_at=entry["created_at"],
        author=entry["author"],
        restored_from=entry.get("restored_from"),
    )


def _info(head: Doc) -> FileInfo:
    current = find_entry(head, head["current"]) or head["versions"][-1]
    return FileInfo(
        owner=head["owner"],
        path=head["path"],
        version=head["current"],
        size=current["size"],
        sha256=current["sha256"],
        content_type=current["content_type"],
        created_at=head["created_at"],
        updated_at=head["updated_at"],
        deleted=bool(head["deleted"]),
        versions=len(head["versions"]),
        bytes=head["bytes"],
    )


def _written(done: Committed) -> FileWritten:
    return FileWritten(**_info(done.head).model_dump(), pruned=done.pruned)


def _share_list(shares: list[Doc]) -> ShareList:
    return ShareList(
        shares=[
            Share.model_validate({k: s.get(k) for k in ("path", "agent", "group", "mode", "created_at")})
            for s in shares
        ]
    )
