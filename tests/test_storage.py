"""Storage syscalls through a real scheduler: versions, rollback, soft delete, paths, content, quotas, approval."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from aiosd.sdk import CallError, Client

from .harness import AgentRegistry, SchedulerProcess, World
from .scripted_worker import wait_until


@pytest.fixture(scope="module")
def client(shared_world: World, scheduler: SchedulerProcess) -> Iterator[Client]:
    with Client(shared_world.amqp_url(), timeout=30) as c:
        yield c


def fails(client: Client, syscall: str, args: dict[str, Any]) -> CallError:
    """The error of a call that must fail."""
    with pytest.raises(CallError) as err:
        client.call(f"storage.{syscall}", args)
    return err.value


def write(client: Client, path: str, text: str, **extra: Any) -> dict[str, Any]:
    return dict(client.call("storage.write", {"path": path, "text": text, **extra}))


def read(client: Client, path: str, **extra: Any) -> dict[str, Any]:
    return dict(client.call("storage.read", {"path": path, **extra}))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_versions_rollback_list_stat(client: Client, shared_world: World) -> None:
    texts = ["first draft", "second draft", "third draft, longer"]
    written = [write(client, "/notes/plan.md", t, content_type="text/markdown") for t in texts]
    assert [w["version"] for w in written] == [1, 2, 3]
    assert written[-1]["size"] == len(texts[-1]) and written[-1]["sha256"] == sha(texts[-1].encode())
    assert written[-1]["bytes"] == sum(len(t) for t in texts) and written[-1]["versions"] == 3
    for number, text in enumerate(texts, start=1):
        got = read(client, "notes/plan.md", version=number)  # no leading '/': the same file
        assert (got["text"], got["version"], got["current"], got["base64"]) == (text, number, 3, None)
        assert got["content_type"] == "text/markdown" and got["sha256"] == sha(text.encode())
    assert read(client, "/notes/plan.md")["text"] == texts[-1]

    rolled = client.call("storage.rollback", {"path": "/notes/plan.md", "version": 1})
    assert rolled["version"] == 4 and rolled["sha256"] == sha(texts[0].encode())
    assert read(client, "/notes/plan.md")["text"] == texts[0]

    write(client, "/notes/todo.txt", "buy milk")
    write(client, "/notesy/other.txt", "not under /notes/")
    listed = client.call("storage.list", {"prefix": "/notes/"})
    assert [f["path"] for f in listed["files"]] == ["/notes/plan.md", "/notes/todo.txt"] and not listed["truncated"]
    assert [f["path"] for f in client.call("storage.list", {"prefix": "/notes"})["files"]][-1] == "/notesy/other.txt"
    assert client.call("storage.list", {"prefix": "/notes/", "limit": 1})["truncated"]

    stat = client.call("storage.stat", {"path": "/notes/plan.md"})
    assert [v["version"] for v in stat["history"]] == [4, 3, 2, 1]
    assert stat["history"][0]["restored_from"] == 1 and stat["history"][1]["restored_from"] is None
    assert stat["version"] == 4 and not stat["deleted"] and stat["created_at"] <= stat["updated_at"]

    missing = fails(client, "read", {"path": "/notes/plan.md", "version": 9})
    assert missing.code == "not_found" and "kept: 1, 2, 3, 4" in missing.message
    assert fails(client, "read", {"path": "/nothing/here"}).code == "not_found"
    conflict = fails(client, "write", {"path": "/notes/plan.md", "text": "x", "if_version": 2})
    assert conflict.code == "conflict" and "version 4" in conflict.message
    assert write(client, "/notes/plan.md", "checked", if_version=4)["version"] == 5
    audited = shared_world.db().audit.find_one({"syscall": "storage.write", "decision": "completed"})
    assert audited is not None and audited["resource"] == f"storage:{client.agent}:/notes/plan.md"


def test_soft_delete_and_restore(client: Client) -> None:
    write(client, "/trash/a.txt", "keep me")
    write(client, "/trash/a.txt", "keep me too")
    deleted = client.call("storage.delete", {"path": "/trash/a.txt"})
    assert (deleted["version"], deleted["purged"], deleted["released_bytes"]) == (2, False, 0)

    gone = fails(client, "read", {"path": "/trash/a.txt"})
    assert gone.code == "not_found" and "storage.rollback" in gone.message
    assert client.call("storage.list", {"prefix": "/trash/"})["files"] == []
    hidden = client.call("storage.list", {"prefix": "/trash/", "include_deleted": True})["files"]
    assert [(f["path"], f["deleted"]) for f in hidden] == [("/trash/a.txt", True)]
    assert client.call("storage.stat", {"path": "/trash/a.txt"})["deleted"]
    assert read(client, "/trash/a.txt", version=1)["text"] == "keep me"  # kept versions stay readable
    assert fails(client, "delete", {"path": "/trash/a.txt"}).code == "not_found"  # already deleted

    restored = client.call("storage.rollback", {"path": "/trash/a.txt"})  # no version: restore the last one
    assert (restored["version"], restored["deleted"]) == (3, False)
    assert read(client, "/trash/a.txt")["text"] == "keep me too"
    needs_version = fails(client, "rollback", {"path": "/trash/a.txt"})
    assert needs_version.code == "invalid_args" and "name the version" in needs_version.message

    # Writing to a deleted path brings it back as the next version.
    client.call("storage.delete", {"path": "/trash/a.txt"})
    assert write(client, "/trash/a.txt", "reborn")["version"] == 4

    purged = client.call("storage.delete", {"path": "/trash/a.txt", "purge": True})
    assert purged["purged"] and purged["released_bytes"] == 7 + 11 + 11 + 6  # every kept version
    assert fails(client, "stat", {"path": "/trash/a.txt"}).code == "not_found"
    assert fails(client, "read", {"path": "/trash/a.txt", "version": 1}).code == "not_found"
    fresh = write(client, "/trash/a.txt", "fresh")  # a new file; version numbers of a path are never reused
    assert (fresh["version"], fresh["versions"], fresh["bytes"]) == (5, 1, 5)


BAD_PATHS = [
    ("..", "'..' segments are not allowed"),
    ("/../x", "'..' segments are not allowed"),
    ("a/../../b", "'..' segments are not allowed"),
    ("/notes/../../etc/passwd", "'..' segments are not allowed"),
    ("./a", "'.' segments are not allowed"),
    ("a//b", "empty segment"),
    ("//etc/passwd", "empty segment"),
    ("a\0b", "NUL"),
    ("a\\..\\b", "backslash"),
    ("C:\\Windows\\win.ini", "backslash"),
    ("/", "namespace root"),
    ("dir/", "cannot end with '/'"),
    ("a\nb", "control character"),
    ("x" * 1025, "at most 1024 characters"),
    ("/" + "/".join(["d"] * 65), "too deep"),
]


@pytest.mark.parametrize(("path", "why"), BAD_PATHS)
def test_path_tricks_are_refused(client: Client, shared_world: World, path: str, why: str) -> None:
    before = shared_world.db()["storage_heads"].count_documents({})
    for syscall, args in (("write", {"path": path, "text": "pwned"}), ("read", {"path": path})):
        reply = client.request(f"storage.{syscall}", args)
        assert reply.error is not None and reply.error.code.value == "invalid_args", reply
        assert "path" in reply.error.message and why in reply.error.message, reply.error.message
    assert shared_world.db()["storage_heads"].count_documents({}) == before


def test_absolute_and_foreign_looking_paths_stay_in_the_namespace(client: Client) -> None:
    assert fails(client, "read", {"path": "/etc/passwd"}).code == "not_found"  # not the host's file
    written = write(client, "/etc/passwd", "just a file called /etc/passwd")
    assert written["owner"] == client.agent and written["path"] == "/etc/passwd"
    assert read(client, "etc/passwd")["text"] == "just a file called /etc/passwd"
    with open("/etc/passwd") as host_file:
        assert "root:" in host_file.read()  # the host file is untouched, obviously
    bad_owner = fails(client, "read", {"path": "/x", "owner": "../alice"})
    assert bad_owner.code == "invalid_args" and "owner" in bad_owner.message


def test_binary_round_trip_and_large_file_in_gridfs(client: Client, shared_world: World) -> None:
    small = bytes(range(256)) * 4
    stored = client.call("storage.write", {"path": "/bin/small.dat", "base64": base64.b64encode(small).decode()})
    assert (stored["size"], stored["sha256"], stored["content_type"]) == (
        len(small),
        sha(small),
        "application/octet-stream",
    )
    got = read(client, "/bin/small.dat")
    assert got["text"] is None and base64.b64decode(got["base64"]) == small
    not_text = fails(client, "read", {"path": "/bin/small.dat", "encoding": "text"})
    assert not_text.code == "invalid_args" and "base64" in not_text.message
    assert read(client, "/bin/small.dat", encoding="base64")["base64"] == base64.b64encode(small).decode()
    assert fails(client, "write", {"path": "/bin/x", "base64": "not base64!"}).code == "invalid_args"
    assert fails(client, "write", {"path": "/bin/x"}).code == "invalid_args"  # no content at all

    large = os.urandom(600 * 1024)  # above the 256 KiB inline limit, below the 1 MiB request limit
    big = client.call("storage.write", {"path": "/bin/large.bin", "base64": base64.b64encode(large).decode()})
    assert big["size"] == len(large) and big["sha256"] == sha(large)
    version = shared_world.db()["storage_versions"].find_one({"_id": f"{client.agent}/bin/large.bin@1"})
    assert version is not None and "blob" in version and "data" not in version
    assert shared_world.db()["storage_blobs.files"].find_one({"_id": version["blob"]})["length"] == len(large)
    assert base64.b64decode(read(client, "/bin/large.bin")["base64"]) == large
    text_version = shared_world.db()["storage_versions"].find_one({"_id": f"{client.agent}/bin/small.dat@1"})
    assert text_version is not None and "data" in text_version  # small content stays inline


def test_quota_counts_every_version_and_pruning_releases(registry: AgentRegistry, shared_world: World) -> None:
    url = registry.add("hoarder", "--storage-bytes", "10000", "--storage-versions", "2", "--storage-file-bytes", "6000")
    name = registry.name("hoarder")
    counter = shared_world.db()["counters"]
    with Client(url, timeout=30) as c:
        assert [write(c, "/log.txt", "a" * 4000)["version"] for _ in range(2)] == [1, 2]
        third = write(c, "/log.txt", "b" * 4000)  # keeps 2 versions: version 1 is pruned, net growth 0
        assert (third["version"], third["pruned"], third["versions"], third["bytes"]) == (3, [1], 2, 8000)
        assert counter.find_one({"_id": f"{name}:storage"})["bytes"] == 8000
        assert fails(c, "read", {"path": "/log.txt", "version": 1}).code == "not_found"

        over = fails(c, "write", {"path": "/other.txt", "text": "c" * 4000})
        assert over.code == "quota_exceeded" and "8000 of 10000 bytes" in over.message
        assert over.reply is not None and over.reply.status.value == "denied"
        assert fails(c, "stat", {"path": "/other.txt"}).code == "not_found"  # nothing was stored
        assert counter.find_one({"_id": f"{name}:storage"})["bytes"] == 8000
        # A soft delete keeps the versions (restorable), so they still count.
        c.call("storage.delete", {"path": "/log.txt"})
        assert fails(c, "write", {"path": "/other.txt", "text": "c" * 4000}).code == "quota_exceeded"
        too_big = fails(c, "write", {"path": "/huge.txt", "text": "d" * 6001})
        assert too_big.code == "too_large" and "6000" in too_big.message

        # The pruned version's document is deleted by the storage sweep.
        versions = shared_world.db()["storage_versions"]
        wait_until(lambda: versions.find_one({"_id": f"{name}/log.txt@1"}) is None, timeout=20)
        assert versions.find_one({"_id": f"{name}/log.txt@3"}) is not None

        assert c.call("storage.delete", {"path": "/log.txt", "purge": True})["released_bytes"] == 8000
        assert counter.find_one({"_id": f"{name}:storage"})["bytes"] == 0
        assert write(c, "/other.txt", "c" * 4000)["version"] == 1
        wait_until(lambda: versions.find_one({"_id": f"{name}/log.txt@3"}) is None, timeout=20)


@pytest.fixture
def approval_registry(world: World) -> Iterator[AgentRegistry]:
    reg = AgentRegistry(world)
    yield reg
    reg.cleanup()


def test_delete_waits_for_approval(world: World, make_scheduler: Any, approval_registry: AgentRegistry) -> None:
    make_scheduler(approval_poll="0.2").start()
    url = approval_registry.add("careful", "--approve", "storage.delete")
    with Client(url, timeout=60) as c:
        write(c, "/contract.txt", "signed")
        outcome: dict[str, Any] = {}
        deleter = threading.Thread(target=lambda: outcome.update(c.call("storage.delete", {"path": "/contract.txt"})))
        deleter.start()
        key = wait_until(
            lambda: next((d["_id"] for d in world.db().syscalls.find({"state": "pending_approval"})), None)
        )
        assert read(c, "/contract.txt")["text"] == "signed"  # parked: nothing deleted yet
        assert approval_registry.cli("approve", key).returncode == 0
        deleter.join(30)
        assert outcome["path"] == "/contract.txt" and not outcome["purged"]
        assert fails(c, "read", {"path": "/contract.txt"}).code == "not_found"
