"""The audit chain's hash: canonical, covering every hashed field, keyed when a key is set."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from aiosd.daemon.audit.chain import GENESIS, HASHED_FIELDS, canonical_ts, record_hash


def _record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "seq": 7,
        "prev": GENESIS,
        "ts": datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
        "agent": "alice",
        "syscall": "memory.add",
        "resource": "memory:alice",
        "decision": "completed",
        "code": None,
        "reason": None,
        "message_id": "m1",
        "actor": "scheduler",
    }
    record.update(changes)
    return record


def test_the_hash_is_deterministic_and_ignores_fields_outside_the_chain() -> None:
    assert record_hash(_record(), None) == record_hash(_record(), None)
    assert record_hash(_record(_id=7, hash="whatever", extra=1), None) == record_hash(_record(), None)


@pytest.mark.parametrize("field", [f for f in HASHED_FIELDS if f != "ts"])
def test_changing_any_hashed_field_changes_the_hash(field: str) -> None:
    assert record_hash(_record(**{field: "tampered"}), None) != record_hash(_record(), None)


def test_timestamps_hash_as_utc_milliseconds_as_the_database_stores_them() -> None:
    ts = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert canonical_ts(ts) == "2026-03-01T12:00:00.123+00:00"
    same_instant = ts.astimezone(timezone(timedelta(hours=5)))
    assert record_hash(_record(ts=same_instant), None) == record_hash(_record(), None)
    truncated = ts.replace(microsecond=123000)  # what a round trip through BSON gives back
    assert record_hash(_record(ts=truncated), None) == record_hash(_record(), None)
    assert record_hash(_record(ts=ts + timedelta(milliseconds=1)), None) != record_hash(_record(), None)


def test_a_key_makes_the_hash_an_hmac_that_differs_per_key() -> None:
    plain = record_hash(_record(), None)
    keyed = record_hash(_record(), b"secret")
    assert keyed != plain and keyed != record_hash(_record(), b"other") and len(keyed) == 64
