"""Poison messages: given up after repeated failures while the store works, never during an outage."""

from __future__ import annotations

from aiosd.daemon.pipeline.poison import PoisonGuard
from aiosd.daemon.transport.delivery import Delivery


def _delivery(message_id: str, body: bytes = b"{}") -> Delivery:
    return Delivery(
        body=body, ack=lambda: None, nack=lambda _r: None, dead_letter=lambda _c, _r: None,
        message_id=message_id, correlation_id=None, reply_to=None, priority=0, user_id="alice",
    )  # fmt: skip


def test_an_outage_gives_up_nothing() -> None:
    guard = PoisonGuard(limit=3)
    d = _delivery("m1")
    assert [guard.failed(d) for _ in range(10)] == [None] * 10  # the store never answered meanwhile


def test_a_message_failing_while_the_store_works_is_poison_after_the_limit() -> None:
    guard = PoisonGuard(limit=3)
    poison, fine = _delivery("bad"), _delivery("ok")
    assert guard.failed(poison) is None
    guard.stored([fine])  # others are stored: the store works
    assert guard.failed(poison) is None
    assert guard.failed(poison) == 3


def test_a_stored_message_is_no_longer_a_suspect() -> None:
    guard = PoisonGuard(limit=2)
    d = _delivery("m")
    guard.failed(d)
    guard.stored([d])
    assert guard.failed(d) is None  # counting starts again
    assert guard.store_works()
