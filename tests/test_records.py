"""Committing replies: first completion wins, and a retried commit knows its own stored replies."""

from __future__ import annotations

from datetime import UTC, datetime

from aiosd.daemon.pipeline.records import Envelope, Records
from aiosd.sdk.protocol import Reply, Request

from .harness import World


def _env(n: int) -> Envelope:
    request = Request(syscall="memory.add", args={"content": f"note {n}"})
    return Envelope("agent", f"m{n}", request, 0, None, f"c{n}", datetime(2026, 1, 1, tzinfo=UTC))


def test_a_retried_commit_claims_only_replies_equal_to_its_own(world: World) -> None:
    db = world.db()
    records = Records(db["syscalls"], db["results"])
    ours = [(_env(n), Reply.ok(f"m{n}", "memory.add", {"n": n})) for n in range(3)]
    # An earlier try stored the first reply before the store went away; another run stored the third's.
    assert records.complete_many(ours[:1]) == ours[:1]
    other = Reply.ok("m2", "memory.add", {"n": "another run"})
    assert records.complete_many([(ours[2][0], other)]) == [(ours[2][0], other)]

    assert records.complete_many(ours) == ours[1:2]  # a first try: the stored ones won before
    assert records.complete_many(ours, again=True) == ours[:2]  # a retry: its own stored reply is its own
    assert db["results"].find_one({"_id": ours[2][0].key})["reply"]["result"] == {"n": "another run"}
