"""MongoDB access: one client, the collections aiosd uses, and their indexes.

Only the portable core of MongoDB is used (single-document atomic updates,
plain indexes) so FerretDB and MongoDB behave the same.
"""

from __future__ import annotations

from typing import Any

import pymongo
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import PyMongoError

from aiosd.sdk.cluster import WORKERS_COLLECTION
from aiosd.sdk.errors import ServiceUnavailable

Doc = dict[str, Any]


#: MongoDB's error code for a duplicate key (a unique index refused a write).
DUPLICATE_KEY = 11000


class Store:
    """Owns the MongoDB client; pymongo's client is thread-safe and pooled."""

    def __init__(self, url: str, db_name: str, timeout: float = 5.0) -> None:
        self.client: pymongo.MongoClient[Doc] = pymongo.MongoClient(
            url,
            tz_aware=True,
            serverSelectionTimeoutMS=int(timeout * 1000),
            connectTimeoutMS=int(timeout * 1000),
            appname="aiosd",
        )
        self.db: Database[Doc] = self.client[db_name]
        self.syscalls: Collection[Doc] = self.db["syscalls"]
        self.results: Collection[Doc] = self.db["results"]
        self.audit: Collection[Doc] = self.db["audit"]
        self.memory: Collection[Doc] = self.db["memory"]
        self.workers: Collection[Doc] = self.db[WORKERS_COLLECTION]
        self.sessions: Collection[Doc] = self.db["sessions"]
        self.usage: Collection[Doc] = self.db["usage"]

    def ping(self) -> None:
        """Raise :class:`ServiceUnavailable` unless MongoDB answers."""
        try:
            self.client.admin.command("ping")
        except PyMongoError as exc:
            raise ServiceUnavailable(f"MongoDB is unreachable: {exc}") from exc

    def ensure_indexes(self) -> None:
        """Create the indexes the queries rely on (idempotent)."""
        self.syscalls.create_index([("accepted_at", 1)])
        self.syscalls.create_index([("state", 1), ("priority", -1), ("queued_at", 1)])
        self.results.create_index([("id", 1)])
        self.audit.create_index([("ts", 1)])
        self.audit.create_index([("agent", 1), ("ts", 1)])
        self.memory.create_index([("agent", 1), ("deleted", 1)])
        self.db["tasks"].create_index([("agent", 1), ("batch", 1), ("_id", 1)])
        self.db["batches"].create_index([("state", 1)])
        self.db["batches"].create_index([("created_at", -1)])

    def close(self) -> None:
        """Close the pooled connections."""
        self.client.close()
