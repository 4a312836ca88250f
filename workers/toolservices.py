"""Kernel services a sandboxed tool may ask for, answered by ``aiosd tools`` for the calling agent.

A child never gets database credentials: it asks its parent over the
control channel (``ctx.read_file(...)``), and the parent answers with the
agent named in the lease -- which the scheduler took from the broker-proven
``user_id`` -- so a tool cannot reach another agent's data.

Storage is read through the :class:`StorageReader` seam.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from aiosd.sdk.protocol import ErrorCode
from aiosd.sdk.tools import StorageReader, ToolFailure


class KernelServices:
    """The services, as the sandbox's ``serve(agent, service, params)``."""

    def __init__(self, storage: StorageReader | None = None) -> None:
        self.storage = storage

    async def __call__(self, agent: str, service: str, params: dict[str, Any]) -> Any:
        if service == "storage.read":
            return await self._read(agent, params)
        raise ToolFailure(ErrorCode.TOOL_FAILED, f"unknown kernel service {service!r}")

    async def _read(self, agent: str, params: dict[str, Any]) -> dict[str, Any]:
        if self.storage is None:
            raise ToolFailure(ErrorCode.UNAVAILABLE, "storage is not available to tools on this host")
        path, version = params.get("path"), params.get("version")
        if not isinstance(path, str) or not (version is None or isinstance(version, int)):
            raise ToolFailure(ErrorCode.INVALID_ARGS, "storage.read needs a path and an optional integer version")
        got = await asyncio.to_thread(self.storage.read, agent, path, version)
        return {
            "path": got.path,
            "version": got.version,
            "content_type": got.content_type,
            "data": base64.b64encode(got.data).decode(),
        }
