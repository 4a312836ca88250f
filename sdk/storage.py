"""Arguments and results of the ``storage.*`` syscalls: versioned per-agent files.

Every agent has its own namespace of files. A path (rules: :mod:`.paths`)
names a file inside the *caller's* namespace or, with ``owner``, inside
another agent's namespace that is shared with the caller; it is never a host
filesystem path. Content travels as ``text`` (UTF-8) or ``base64`` (any bytes).
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from .paths import MAX_PATH_CHARS, normalize_path, normalize_prefix

#: Hard ceiling of one file version; policies set lower limits (``storage_file_bytes``).
MAX_FILE_BYTES = 64 * 2**20
#: Agent and group names (the same rule as the daemon's policies).
NAME_PATTERN = r"^[a-z][a-z0-9_-]{1,62}$"
Encoding = Literal["text", "base64"]
Mode = Literal["read", "write"]


FilePath = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_PATH_CHARS,
        description="File path in the namespace, e.g. '/notes/a.txt' (no '.', '..', '//', backslash or NUL).",
    ),
    AfterValidator(normalize_path),
]
Prefix = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_PATH_CHARS,
        description="Path prefix; '/' is the whole namespace, '/docs/' a directory.",
    ),
    AfterValidator(normalize_prefix),
]
Owner = Annotated[
    str | None,
    Field(
        pattern=NAME_PATTERN,
        description="The agent whose namespace holds the file (default: the caller); it must share it with the caller.",
    ),
]


class _Args(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True)


class StorageWriteArgs(_Args):
    """``storage.write``: store a new version of a file (created if missing, undeleted if deleted)."""

    path: FilePath
    text: str | None = Field(default=None, description="UTF-8 content; give exactly one of text and base64.")
    base64: str | None = Field(default=None, description="Binary content, standard base64.")
    content_type: str | None = Field(
        default=None,
        max_length=255,
        pattern=r"^[\x21-\x7e][\x20-\x7e]*$",
        description="MIME type; default text/plain; charset=utf-8 for text, application/octet-stream for base64.",
    )
    if_version: int | None = Field(
        default=None, ge=0, description="Write only if the current version is this one (0: only if no live file)."
    )
    owner: Owner = None

    @model_validator(mode="after")
    def _one_content(self) -> StorageWriteArgs:
        if (self.text is None) == (self.base64 is None):
            raise ValueError("give exactly one of 'text' and 'base64'")
        if self.base64 is not None:
            try:
                b64decode(self.base64, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("'base64' is not valid standard base64") from None
        if self.size() > MAX_FILE_BYTES:
            raise ValueError(f"content is larger than {MAX_FILE_BYTES} bytes")
        return self

    def content(self) -> bytes:
        """The bytes to store."""
        if self.text is not None:
            return self.text.encode("utf-8")
        return b64decode(self.base64 or "", validate=True)

    def size(self) -> int:
        """Bytes of the content (without decoding base64)."""
        if self.text is not None:
            return len(self.text.encode("utf-8"))
        data = self.base64 or ""
        return len(data) * 3 // 4 - data[-2:].count("=")

    def encoding(self) -> Encoding:
        """How the content was sent (and is returned by default)."""
        return "text" if self.text is not None else "base64"


class StorageReadArgs(_Args):
    """``storage.read``: a file's content, the current version unless ``version`` is given."""

    path: FilePath
    version: int | None = Field(default=None, ge=1, description="A kept version; a deleted file needs one.")
    encoding: Encoding | None = Field(default=None, description="Return text or base64; default: as written.")
    owner: Owner = None


class StoragePathArgs(_Args):
    """``storage.stat``: name one file."""

    path: FilePath
    owner: Owner = None


class StorageListArgs(_Args):
    """``storage.list``: files whose path starts with ``prefix``, in path order."""

    prefix: Prefix = "/"
    include_deleted: bool = False
    limit: int = Field(default=1000, ge=1, le=1000)
    owner: Owner = None


class StorageDeleteArgs(_Args):
    """``storage.delete``: a soft delete (restorable with ``storage.rollback``) or, with ``purge``, for good."""

    path: FilePath
    purge: bool = Field(default=False, description="Remove every version now and free their bytes (not restorable).")
    owner: Owner = None


class StorageRollbackArgs(_Args):
    """``storage.rollback``: store a kept version again as a new version; also restores a deleted file."""

    path: FilePath
    version: int | None = Field(
        default=None, ge=1, description="The version to restore; default (deleted files only): the last one."
    )
    owner: Owner = None


class StorageShareArgs(_Args):
    """``storage.share``: let an agent or a group read (or also write) a file or everything under a prefix."""

    path: Prefix = Field(description="A file ('/a.txt'), a directory ('/docs/') or '/' for the whole namespace.")
    agent: str | None = Field(default=None, pattern=NAME_PATTERN)
    group: str | None = Field(default=None, pattern=NAME_PATTERN)
    mode: Mode = "read"

    @model_validator(mode="after")
    def _one_grantee(self) -> StorageShareArgs:
        if (self.agent is None) == (self.group is None):
            raise ValueError("give exactly one of 'agent' and 'group'")
        return self


class StorageUnshareArgs(_Args):
    """``storage.unshare``: withdraw what ``storage.share`` gave for this path and grantee."""

    path: Prefix
    agent: str | None = Field(default=None, pattern=NAME_PATTERN)
    group: str | None = Field(default=None, pattern=NAME_PATTERN)

    @model_validator(mode="after")
    def _one_grantee(self) -> StorageUnshareArgs:
        if (self.agent is None) == (self.group is None):
            raise ValueError("give exactly one of 'agent' and 'group'")
        return self


class FileVersion(_Result):
    """One kept version of a file."""

    version: int
    size: int
    sha256: str
    content_type: str
    created_at: datetime
    author: str = Field(description="The agent that wrote it (the owner, or an agent with a write share).")
    restored_from: int | None = Field(default=None, description="Set when a rollback made this version.")


class FileInfo(_Result):
    """A file and its current version."""

    owner: str
    path: str
    version: int = Field(description="Current version (the last one written).")
    size: int
    sha256: str
    content_type: str
    created_at: datetime
    updated_at: datetime
    deleted: bool
    versions: int = Field(description="How many versions are kept.")
    bytes: int = Field(description="Bytes of every kept version (what counts against the owner's quota).")


class FileStat(FileInfo):
    """``storage.stat`` result: the file with its kept versions, newest first."""

    history: list[FileVersion]


class FileWritten(FileInfo):
    """``storage.write`` / ``storage.rollback`` result: the new version and the versions pruned to make room."""

    pruned: list[int] = Field(description="Old versions removed because the policy keeps only the last N.")


class FileDeleted(_Result):
    """``storage.delete`` result."""

    owner: str
    path: str
    version: int = Field(description="The version current when deleted (restorable unless purged).")
    purged: bool
    released_bytes: int = Field(description="Bytes given back to the quota (0 for a soft delete).")


class FileContent(_Result):
    """``storage.read`` result: one version's content and facts."""

    owner: str
    path: str
    version: int
    current: int = Field(description="The file's current version.")
    size: int
    sha256: str
    content_type: str
    created_at: datetime
    text: str | None = None
    base64: str | None = None


class FileList(_Result):
    """``storage.list`` result."""

    files: list[FileInfo]
    truncated: bool = Field(description="More files match than ``limit``.")


class Share(_Result):
    """One share: who may do what under which path."""

    path: str
    agent: str | None = None
    group: str | None = None
    mode: Mode
    created_at: datetime


class ShareList(_Result):
    """``storage.share`` / ``storage.unshare`` result: every share of the caller's namespace after the change."""

    shares: list[Share]
