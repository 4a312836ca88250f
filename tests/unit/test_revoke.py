"""Revoking leases: the order's wire shape, and a worker's ledger stopping the calls it names."""

from __future__ import annotations

import concurrent.futures
from datetime import UTC, datetime
from functools import partial

import pytest

from aiosd.sdk.cluster import Lease, Outcome, Revoke, decode_order
from aiosd.sdk.errors import ProtocolError
from aiosd.workers.ledger import STOPPING, Held, Ledger


def _lease(lease_id: str) -> Lease:
    return Lease(
        lease_id=lease_id,
        key=f"a/{lease_id}",
        agent="a",
        call_id=lease_id,
        args={"messages": []},
        expires_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def _running(ledger: Ledger, lease_id: str) -> concurrent.futures.Future[Outcome]:
    """A held lease whose call runs (a pending future), reporting to the ledger when it ends, as the worker does."""
    lease = _lease(lease_id)
    future: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
    ledger.hold(Held(lease, tag=1, connection=None, future=future))
    future.add_done_callback(partial(ledger.finish, lease))
    return future


def test_a_worker_reads_leases_and_revokes_from_one_queue() -> None:
    lease = _lease("l1")
    assert decode_order(lease.model_dump_json().encode()) == lease
    revoke = Revoke(lease_ids=["l1", "l2"], reason="reserved")
    assert decode_order(revoke.model_dump_json().encode()) == revoke
    with pytest.raises(ProtocolError):
        decode_order(b"{not json")
    with pytest.raises(ProtocolError):
        decode_order(b'{"kind": "revoke"}')  # no lease ids


def test_revoked_calls_stop_and_report_released_with_the_reason() -> None:
    ledger = Ledger("w1")
    batch, other = _running(ledger, "batch"), _running(ledger, "other")
    assert ledger.revoke(["batch", "unknown"], "the worker is reserved for interactive calls") == 1
    assert batch.cancelled() and not other.done()
    ledger.collect()
    [outcome] = list(ledger.outbox)
    assert (outcome.lease_id, outcome.status) == ("batch", "released")
    assert outcome.error_message == "the worker is reserved for interactive calls"
    # A call that already finished is left alone; a later stop still says why it stopped.
    other.set_result(Outcome(worker_id="w1", lease_id="other", key="a/other", status="done"))
    assert ledger.revoke(["other"], "late") == 0
    stopping = _running(ledger, "third")
    assert ledger.cancel_all() >= 1 and stopping.cancelled()
    ledger.collect()
    assert [o.error_message for o in ledger.outbox if o.lease_id == "third"] == [STOPPING]
