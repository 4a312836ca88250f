"""The storage service on the real database, without a broker: re-runs, crashes and concurrent writers."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from aiosd.daemon.access.authorizer import PolicyLookup
from aiosd.daemon.access.counters import Counters
from aiosd.daemon.access.directory import AGENTS, Directory
from aiosd.daemon.access.policy import Policy
from aiosd.daemon.errors import NotFound, QuotaExceeded
from aiosd.daemon.services.context import CallContext
from aiosd.daemon.services.storage.guard import PolicyStorageGuard, storage_key
from aiosd.daemon.services.storage.service import StorageService
from aiosd.sdk.storage import StorageReadArgs, StorageWriteArgs

from .harness import World

AGENT = "solo"


@pytest.fixture
def db(world: World) -> Any:
    return world.db()


def service(db: Any, **policy: Any) -> StorageService:
    """A storage service whose guard reads ``AGENT``'s policy from the agents collection."""
    db[AGENTS].insert_one({"_id": AGENT, "policy": Policy(**policy).model_dump(mode="json"), "rev": "1"})
    guard = PolicyStorageGuard(PolicyLookup(Directory(db[AGENTS])), Counters(db["counters"]))
    return StorageService(db, guard)


def ctx(call: str) -> CallContext:
    return CallContext(agent=AGENT, call_id=call, syscall="storage.write")


def used(db: Any) -> int:
    return int((db["counters"].find_one({"_id": storage_key(AGENT)}) or {}).get("bytes") or 0)


def test_a_rerun_syscall_writes_once(db: Any) -> None:
    svc = service(db)
    args = StorageWriteArgs(path="/a.txt", text="once")
    first = svc.write(ctx("call-1"), args)
    again = svc.write(ctx("call-1"), args)  # the same syscall re-run after a crash
    assert first.version == again.version == 1 and again.versions == 1
    assert used(db) == 4
    assert svc.write(ctx("call-2"), args).version == 2


def test_an_uncommitted_version_is_skipped_and_never_visible(db: Any) -> None:
    svc = service(db)
    svc.write(ctx("c1"), StorageWriteArgs(path="/f", text="one"))
    # A call that crashed after storing its version document but before committing the head.
    db["storage_versions"].insert_one(
        {"_id": f"{AGENT}/f@2", "owner": AGENT, "path": "/f", "v": 2, "call": "solo/crashed", "data": b"orphan"}
    )
    assert svc.write(ctx("c2"), StorageWriteArgs(path="/f", text="two")).version == 3
    with pytest.raises(NotFound):
        svc.read(ctx("c3"), StorageReadArgs(path="/f", version=2))
    assert svc.read(ctx("c4"), StorageReadArgs(path="/f")).text == "two"


def test_concurrent_writers_get_distinct_versions_and_exact_bytes(db: Any) -> None:
    svc = service(db, storage_versions=5)

    def write(i: int) -> int:
        return svc.write(ctx(f"w{i}"), StorageWriteArgs(path="/shared.log", text="x" * (i + 1))).version

    with ThreadPoolExecutor(16) as pool:
        versions = list(pool.map(write, range(60)))
    assert sorted(versions) == list(range(1, 61))
    head = db["storage_heads"].find_one({"_id": f"{AGENT}/shared.log"})
    assert head["current"] == 60 and [e["v"] for e in head["versions"]] == [56, 57, 58, 59, 60]
    assert used(db) == head["bytes"] == sum(e["size"] for e in head["versions"])
    assert db["storage_trash"].count_documents({}) == 55
    assert svc.sweep() == 55
    assert db["storage_versions"].count_documents({}) == 5 and db["storage_trash"].count_documents({}) == 0


def test_quota_holds_under_concurrent_writes(db: Any) -> None:
    svc = service(db, storage_bytes=1000)

    def write(i: int) -> bool:
        try:
            svc.write(ctx(f"q{i}"), StorageWriteArgs(path=f"/q/{i}", text="y" * 100))
            return True
        except QuotaExceeded:
            return False

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(write, range(30)))
    assert results.count(True) == 10 and used(db) == 1000


def test_a_blob_whose_write_crashed_before_its_version_is_swept(db: Any) -> None:
    from datetime import timedelta

    from aiosd.daemon.services.storage.blobs import UPLOADS, Blobs

    svc = service(db)
    big = b"x" * (300 * 1024)  # above INLINE_MAX: goes to GridFS
    svc.write(ctx("w-kept"), StorageWriteArgs(path="/kept.bin", base64=base64.b64encode(big).decode()))
    blobs = Blobs(db)
    orphan = blobs.place(big, "crashed-write")  # uploaded, then the scheduler died before the version
    assert db[UPLOADS].count_documents({}) == 1  # only the orphan's intent: the committed one was cleared
    assert blobs.sweep_orphans(db["storage_versions"], grace=timedelta(hours=1)) == 0  # still within grace
    assert blobs.sweep_orphans(db["storage_versions"], grace=timedelta(0)) == 1
    assert db["storage_blobs.files"].count_documents({"_id": orphan["blob"]}) == 0
    assert db["storage_blobs.chunks"].count_documents({"files_id": orphan["blob"]}) == 0
    assert db[UPLOADS].count_documents({}) == 0
    read = svc.read(ctx("r"), StorageReadArgs(path="/kept.bin", encoding="base64"))
    assert base64.b64decode(read.base64 or "") == big  # the committed file is untouched
