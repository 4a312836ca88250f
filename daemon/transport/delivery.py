"""One AMQP message as the scheduler sees it, with thread-safe ways to settle it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiosd.sdk.protocol import utcnow


@dataclass(frozen=True)
class Delivery:
    """An AMQP message as intake sees it, with thread-safe ways to settle it.

    ``ack``/``nack``/``dead_letter`` are bound to the channel the message came
    from, so a message is never settled on a later connection. ``ack_many``
    (same channel) acknowledges a batch's delivery ``tag``s in one hand-over
    to the connection thread.
    """

    body: bytes
    ack: Callable[[], None]
    nack: Callable[[bool], None]
    dead_letter: Callable[[str, str], None]
    message_id: str | None
    correlation_id: str | None
    reply_to: str | None
    priority: int | None
    user_id: str | None
    routing_key: str = ""
    headers: dict[str, Any] = field(default_factory=dict)
    redelivered: bool = False
    received_at: datetime = field(default_factory=utcnow)
    content_type: str | None = None
    content_encoding: str | None = None
    tag: int = 0
    ack_many: Callable[[list[int]], None] | None = None


def ack_all(deliveries: list[Delivery]) -> None:
    """Acknowledge ``deliveries``: one hand-over per channel, not one per message."""
    # Bound methods of one broker compare (and hash) equal: a key per channel.
    groups: dict[Callable[[list[int]], None], list[int]] = {}
    for d in deliveries:
        if d.ack_many is None:
            d.ack()
        else:
            groups.setdefault(d.ack_many, []).append(d.tag)
    for ack_many, tags in groups.items():
        ack_many(tags)
