"""``aiosd worker --check``: is this worker registered, fresh and healthy? (like arq's check)

The scheduler stores every heartbeat in collection ``workers`` as
``{_id: worker_id, last_seen, healthy, alive, ...}``; the check only reads it.
A registration is fresh when its last heartbeat is at most
:data:`STALE_BEATS` heartbeat intervals old.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from aiosd.sdk.cluster import WORKERS_COLLECTION
from aiosd.sdk.process.settings import Settings

#: Heartbeats a worker may miss before the check calls it stale.
STALE_BEATS = 3


def check_worker(settings: Settings, now: datetime | None = None) -> tuple[bool, str]:
    """``(ok, one-line reason)`` for the worker named by ``settings.worker_id``."""
    worker_id = settings.worker_id
    if not worker_id:
        return False, "no worker id: pass --worker-id or set AIOSD_WORKER_ID"
    timeout_ms = int(min(settings.connect_timeout, 5.0) * 1000)
    client: MongoClient[dict[str, Any]] = MongoClient(
        settings.mongo_url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms, tz_aware=True
    )
    try:
        doc = client[settings.mongo_db][WORKERS_COLLECTION].find_one({"_id": worker_id})
    except PyMongoError as exc:
        return False, f"cannot read MongoDB: {type(exc).__name__}"
    finally:
        client.close()
    return judge(worker_id, doc, settings.heartbeat_interval * STALE_BEATS, now or datetime.now(UTC))


def judge(worker_id: str, doc: dict[str, Any] | None, max_age: float, now: datetime) -> tuple[bool, str]:
    """The verdict on one registration document."""
    if doc is None:
        return False, f"worker {worker_id} is not registered"
    last_seen = doc.get("last_seen")
    if not isinstance(last_seen, datetime):
        return False, f"worker {worker_id} has no last_seen time"
    if last_seen.tzinfo is None:
        last_seen = last_seen.replace(tzinfo=UTC)  # BSON dates are UTC
    age = (now - last_seen).total_seconds()
    if age > max_age:
        return False, f"worker {worker_id} is stale: last heartbeat {age:.1f}s ago (limit {max_age:g}s)"
    if doc.get("alive") is False:
        return False, f"worker {worker_id} has said goodbye"
    if not doc.get("healthy", False):
        return False, f"worker {worker_id} reports its backend unhealthy"
    return True, f"worker {worker_id} is healthy: last heartbeat {max(age, 0.0):.1f}s ago"
