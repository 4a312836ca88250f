"""The hash-chained audit log: concurrent appends, verification, tampering detected and named, tail."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pymongo
import pytest
from bson import ObjectId

from aiosd.daemon.audit.chain import AuditLog, Decision, record_hash
from aiosd.daemon.audit.reader import verify
from aiosd.sdk import Client

from .harness import MONGO_URL, ROOT, SchedulerProcess, World, aiosd_cli, aiosd_command

Collection = pymongo.collection.Collection[dict[str, Any]]


@pytest.fixture
def audit(world: World) -> Iterator[Collection]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(MONGO_URL, tz_aware=True)
    yield client[world.db_name]["audit"]
    client.close()


def append(log: AuditLog, n: int, agent: str = "a") -> None:
    for i in range(n):
        log.record(
            agent=agent, syscall="memory.add", message_id=f"{agent}-{i}", decision=Decision.ACCEPTED, resource="memory"
        )


def test_concurrent_writers_keep_one_unbroken_chain(audit: Collection) -> None:
    shared = AuditLog(audit)
    others = [AuditLog(audit) for _ in range(3)]  # separate tails, like separate processes
    with ThreadPoolExecutor(12) as pool:
        jobs = [pool.submit(append, shared, 25, f"t{i}") for i in range(8)]
        jobs += [pool.submit(append, log, 25, f"o{i}") for i, log in enumerate(others)]
        for job in jobs:
            job.result()
    verdict = verify(audit)
    assert verdict.ok, verdict.problem
    assert verdict.records == verdict.last_seq == 275
    assert sorted(d["_id"] for d in audit.find({}, {"_id": 1})) == list(range(1, 276))


def test_concurrent_processes_keep_one_unbroken_chain(world: World, audit: Collection) -> None:
    script = (
        "import sys, pymongo\n"
        "from aiosd.daemon.audit.chain import AuditLog, Decision\n"
        "col = pymongo.MongoClient(sys.argv[1], tz_aware=True)[sys.argv[2]]['audit']\n"
        "log = AuditLog(col)\n"
        "for i in range(40):\n"
        "    log.record(agent=sys.argv[3], syscall=None, message_id=str(i), decision=Decision.ACCEPTED)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, MONGO_URL, world.db_name, f"p{i}"], cwd=ROOT) for i in range(4)
    ]
    assert all(p.wait(120) == 0 for p in procs)
    verdict = verify(audit)
    assert verdict.ok, verdict.problem
    assert verdict.records == 160


def test_scheduler_decisions_are_chained(shared_world: World, scheduler: SchedulerProcess) -> None:
    with Client(shared_world.amqp_url(), timeout=20) as client:
        ref = client.memory.add("audited")
        client.memory.get(ref.id)
    done = aiosd_cli(shared_world, "audit", "verify")
    assert done.returncode == 0, done.stderr
    assert "audit log intact" in done.stdout
    records = list(shared_world.db().audit.find({"resource": f"memory:{ref.id}"}))
    assert {r["decision"] for r in records} == {"accepted", "completed"}
    assert all(r["prev"] and len(r["hash"]) == 64 and r["seq"] == r["_id"] for r in records)


def _ten_records(audit: Collection) -> None:
    append(AuditLog(audit), 10)


def _broken(world: World) -> tuple[int, str]:
    done = aiosd_cli(world, "audit", "verify", "--json")
    assert done.returncode == 1, done.stdout
    out = json.loads(done.stdout)
    assert out["ok"] is False
    return out["broken"], out["problem"]


def test_verify_names_an_edited_record(world: World, audit: Collection) -> None:
    _ten_records(audit)
    audit.update_one({"_id": 4}, {"$set": {"decision": "denied"}})
    assert _broken(world) == (4, "record 4 was modified: its hash does not match its content")
    human = aiosd_cli(world, "audit", "verify")
    assert human.returncode == 1 and "BROKEN at record 4" in human.stderr


def test_verify_names_a_rewritten_record_with_a_recomputed_hash(world: World, audit: Collection) -> None:
    _ten_records(audit)
    doc = audit.find_one({"_id": 6})
    assert doc is not None
    doc["reason"] = "nothing to see"
    doc["hash"] = record_hash(doc, None)  # a careful forger fixes the record's own hash...
    audit.replace_one({"_id": 6}, doc)
    broken, problem = _broken(world)  # ...but record 7 still holds the old one
    assert broken == 6 and "record 6 was rewritten" in problem


def test_verify_names_a_deleted_record(world: World, audit: Collection) -> None:
    _ten_records(audit)
    audit.delete_one({"_id": 3})
    assert _broken(world) == (3, "record 3 is missing: deleted (the chain jumps from 2 to 4)")


def test_verify_names_records_cut_from_the_end(world: World, audit: Collection) -> None:
    _ten_records(audit)
    audit.delete_many({"_id": {"$gte": 9}})
    broken, problem = _broken(world)
    assert broken == 9 and "9..10 are missing" in problem


def test_verify_names_an_inserted_record(world: World, audit: Collection) -> None:
    _ten_records(audit)
    fake = dict(audit.find_one({"_id": 5}) or {})
    fake["_id"] = 5.5
    audit.insert_one(fake)
    broken, problem = _broken(world)
    assert broken == 5.5 and "inserted" in problem
    audit.delete_one({"_id": 5.5})
    audit.insert_one({**fake, "_id": ObjectId()})
    assert "inserted" in _broken(world)[1]


def test_keyed_chain_rejects_a_forged_append(world: World, audit: Collection) -> None:
    append(AuditLog(audit, key=b"s3cret"), 5)
    assert aiosd_cli(world, "audit", "verify", audit_key="s3cret").returncode == 0
    unkeyed = aiosd_cli(world, "audit", "verify")
    assert unkeyed.returncode == 1 and "audit_key" in unkeyed.stderr
    append(AuditLog(audit), 1)  # a well-formed SHA-256 record by someone without the key
    done = aiosd_cli(world, "audit", "verify", "--json", audit_key="s3cret")
    assert done.returncode == 1 and json.loads(done.stdout)["broken"] == 6


def test_tail_filters_and_follows(world: World, audit: Collection) -> None:
    log = AuditLog(audit)
    append(log, 3, "ann")
    append(log, 2, "ben")
    done = aiosd_cli(world, "audit", "tail", "--agent", "ben", "-n", "5")
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == 2 and all(" ben accepted memory.add " in line for line in lines)
    as_json = [json.loads(line) for line in aiosd_cli(world, "audit", "tail", "-n", "2", "--json").stdout.splitlines()]
    assert [r["seq"] for r in as_json] == [4, 5]

    env = world.env()
    follower = subprocess.Popen(
        aiosd_command("audit", "tail", "--follow", "--agent", "cy", "-n", "0"),
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)
        append(log, 1, "cy")
        assert follower.stdout is not None
        line = follower.stdout.readline()
        assert " cy accepted " in line and line.split()[0] == "6"
    finally:
        follower.terminate()
        follower.wait(10)
