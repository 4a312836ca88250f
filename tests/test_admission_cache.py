"""The policy cache's revision reads, shared between batches for a grace period (real database).

A read of the directory's revision serves the batches admitted within
``REVISION_GRACE`` of its start; every change to the directory waits that long
before it returns, so the next syscall after a change is always admitted on
the changed policy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from aiosd.daemon.access.authorizer import Admission, Meter, PolicyAuthorizer, PolicyLookup, Refused
from aiosd.daemon.access.counters import Counters
from aiosd.daemon.access.directory import REVISION_GRACE, Directory
from aiosd.daemon.access.policy import Policy

from .admission import Clock, scratch_db
from .admission import asks as _asks


@pytest.fixture
def db() -> Iterator[Any]:
    yield from scratch_db("aiosd_admission")


class CountingDirectory(Directory):
    """The real directory, counting its revision reads."""

    reads = 0

    def revision(self) -> int:
        self.reads += 1
        return super().revision()


def test_one_revision_read_serves_the_batches_of_its_grace_period(db: Any) -> None:
    directory, clock = CountingDirectory(db["agents"]), Clock()
    policies = PolicyLookup(directory, clock=clock)
    authorizer = PolicyAuthorizer(policies, Meter(Counters(db["counters"]), policies))
    directory.create("ann", Policy(), external=False)
    for _ in range(5):
        assert all(isinstance(v, Admission) for v in authorizer.authorize_many(_asks("ann", 2)))
    assert directory.reads == 1
    clock.now += REVISION_GRACE * 1.01
    authorizer.authorize_many(_asks("ann"))
    assert directory.reads == 2


def test_a_change_applies_to_the_next_syscall_sent_after_it_returned(db: Any) -> None:
    directory = CountingDirectory(db["agents"])
    policies = PolicyLookup(directory)  # the real clock: the writer's wait is what makes this hold
    authorizer = PolicyAuthorizer(policies, Meter(Counters(db["counters"]), policies))
    directory.create("ann", Policy(), external=False)
    assert isinstance(authorizer.authorize_many(_asks("ann"))[0], Admission)
    started = time.monotonic()
    directory.update("ann", {"disabled": True})
    assert time.monotonic() - started >= REVISION_GRACE  # the writer waited out every read before it
    refused = authorizer.authorize_many(_asks("ann"))[0]
    assert isinstance(refused, Refused) and "disabled" in refused.reason
    directory.update("ann", {"disabled": False, "policy": Policy(syscalls=["memory.get"]).model_dump(mode="json")})
    refused = authorizer.authorize_many(_asks("ann"))[0]
    assert isinstance(refused, Refused) and "memory.add" in refused.reason
