"""A worker publishes an outcome at once even when its call ends while another outcome is being committed."""

from __future__ import annotations

import concurrent.futures
from datetime import UTC, datetime
from functools import partial
from typing import Any

from aiosd.sdk.cluster import Lease, Outcome
from aiosd.sdk.process.lifecycle import Lifecycle
from aiosd.sdk.process.settings import Settings
from aiosd.workers.ledger import Held
from aiosd.workers.worker import Worker


class Broker:
    """Enough of a WorkerBroker: the commit of the first batch is when the second call ends."""

    def __init__(self, during_commit: Any) -> None:
        self.batches: list[list[str]] = []
        self.acked: list[int] = []
        self._during_commit = during_commit

    def publish_outcomes(self, outcomes: list[Outcome]) -> set[str]:
        self.batches.append([o.lease_id for o in outcomes])
        if len(self.batches) == 1:
            self._during_commit()  # the runner thread finishes a call; its wake-up is eaten by this commit
        return set()

    def ack(self, tag: int) -> None:
        self.acked.append(tag)


def _running(worker: Worker, lease_id: str, tag: int) -> concurrent.futures.Future[Outcome]:
    lease = Lease(
        lease_id=lease_id,
        key=f"a/{lease_id}",
        agent="a",
        call_id=lease_id,
        args={},
        expires_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    future: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
    broker = worker._broker
    worker.ledger.hold(Held(lease, tag, broker, future))
    future.add_done_callback(partial(worker.ledger.finish, lease))
    return future


def _done(lease_id: str) -> Outcome:
    return Outcome(worker_id="w1", lease_id=lease_id, key=f"a/{lease_id}", status="done")


def test_an_outcome_that_ends_during_a_commit_is_published_in_the_same_flush() -> None:
    worker = Worker(Settings(worker_id="w1"), Lifecycle(), engine=object())  # type: ignore[arg-type]
    second: list[concurrent.futures.Future[Outcome]] = []
    broker = Broker(lambda: second[0].set_result(_done("second")))
    worker._broker = broker  # type: ignore[assignment]
    first = _running(worker, "first", tag=1)
    second.append(_running(worker, "second", tag=2))
    first.set_result(_done("first"))
    worker._flush(broker)  # type: ignore[arg-type]
    assert broker.batches == [["first"], ["second"]]
    assert broker.acked == [1, 2] and not worker.ledger.held
