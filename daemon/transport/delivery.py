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
    from, so a message is never settled on a later connection.
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
