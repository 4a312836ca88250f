"""The storage seam of the tool runner: read a calling agent's own stored files.

``aiosd tools`` hands this reader to the tool runner as its
:class:`~aiosd.sdk.tools.StorageReader`, so the workers never import the daemon.
:class:`OwnStorage` reads through the storage service (:mod:`.service`)
without an access guard, which confines every read to the calling agent's
own namespace: a tool cannot name another agent's files, shared or not.
"""

from __future__ import annotations

import base64

from pydantic import ValidationError

from aiosd.daemon.errors import SyscallFailed
from aiosd.daemon.services.context import CallContext
from aiosd.daemon.services.storage.service import StorageService
from aiosd.daemon.store import Store
from aiosd.sdk.process.settings import Settings
from aiosd.sdk.protocol import ErrorCode, describe_validation
from aiosd.sdk.storage import StorageReadArgs
from aiosd.sdk.tools import FileBytes, StorageReader, ToolFailure


class OwnStorage:
    """A :class:`~aiosd.sdk.tools.StorageReader` over the scheduler's database."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._service = StorageService(store.db)

    def read(self, agent: str, path: str, version: int | None) -> FileBytes:
        """One version (default: the current one) of ``agent``'s file ``path``."""
        try:
            args = StorageReadArgs(path=path, version=version, encoding="base64")
        except ValidationError as exc:
            raise ToolFailure(ErrorCode.INVALID_ARGS, f"invalid storage path: {describe_validation(exc)}") from exc
        ctx = CallContext(agent=agent, call_id="tool", syscall="storage.read")
        try:
            got = self._service.read(ctx, args)
        except SyscallFailed as exc:
            raise ToolFailure(exc.code, exc.message) from exc
        return FileBytes(
            path=got.path, version=got.version, content_type=got.content_type, data=base64.b64decode(got.base64 or "")
        )


def storage_reader(settings: Settings) -> StorageReader:
    """The tool runner's reader (connects to MongoDB lazily, on the first read)."""
    return OwnStorage(Store(settings.mongo_url, settings.mongo_db, timeout=min(settings.connect_timeout, 5.0)))
