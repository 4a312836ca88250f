"""The scheduler's presence: one small document it refreshes every few seconds.

``aiosd status`` (and the web console) tell a live scheduler from a dead one by
``last_seen``; the document also says what it runs (version, policy, threads)
and since when. Only this process writes its own document.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version

from pymongo.collection import Collection

from aiosd.daemon.store import Doc
from aiosd.sdk.process.settings import Settings
from aiosd.sdk.protocol import utcnow

#: Seconds between refreshes; a scheduler unseen for three of them is reported dead.
PRESENCE_INTERVAL = 5.0


def aiosd_version() -> str:
    """The installed aiosd version."""
    try:
        return version("aiosd")
    except PackageNotFoundError:
        return "unknown"


class Presence:
    """Writes this scheduler's presence document."""

    def __init__(self, collection: Collection[Doc], settings: Settings) -> None:
        self._col = collection
        self.id = f"{socket.gethostname()}-{os.getpid()}"
        self._started: datetime = utcnow()
        self._static: Doc = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": aiosd_version(),
            "policy": settings.policy,
            "threads": settings.threads,
            "metrics_port": settings.metrics_port,
        }

    def beat(self) -> None:
        """Refresh the document (upsert by this process's id)."""
        self._col.update_one(
            {"_id": self.id},
            {"$set": {**self._static, "started_at": self._started, "last_seen": utcnow(), "stopped": False}},
            upsert=True,
        )

    def gone(self) -> None:
        """Mark the document stopped (a clean exit, not a crash)."""
        self._col.update_one({"_id": self.id}, {"$set": {"stopped": True, "last_seen": utcnow()}})
