"""Poison messages: a delivery the store keeps failing on is given up, not redelivered forever.

A transient store failure (the database unreachable, a dropped connection)
hands a batch back to RabbitMQ. That is right while the database is down, but
a message whose content makes the server drop the connection looks transient
too, and would loop. So failures are counted per message: one that failed
``limit`` times while the store served other work since its first failure is
poison, and is refused with its last error. A real outage refuses nothing.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from aiosd.daemon.transport.delivery import Delivery

#: Failures of one message before it is given up (when the store works meanwhile).
LIMIT = 5
#: Messages remembered; the oldest are forgotten first.
REMEMBERED = 10_000
#: The store "works" when it answered within this many seconds.
WORKING = 10.0


class PoisonGuard:
    """Counts transient failures per message (thread-safe)."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._seen: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._last_ok = 0.0
        self._lock = threading.Lock()

    def stored(self, batch: list[Delivery]) -> None:
        """The store took ``batch``: it works, and those messages are no longer suspects."""
        with self._lock:
            self._last_ok = time.monotonic()
            for d in batch:
                self._seen.pop(_key(d), None)

    def store_works(self) -> bool:
        """Whether the store answered recently (a failing batch then hides a poison message)."""
        return time.monotonic() - self._last_ok < WORKING

    def failed(self, d: Delivery) -> int | None:
        """Count a failure of ``d``; its failure count if it is poison now, else ``None``."""
        now = time.monotonic()
        with self._lock:
            count, since = self._seen.pop(_key(d), (0, now))
            count += 1
            self._seen[_key(d)] = (count, since)
            while len(self._seen) > REMEMBERED:
                self._seen.popitem(last=False)
            return count if count >= self.limit and self._last_ok > since else None


def _key(d: Delivery) -> str:
    return f"{d.user_id}/{d.message_id}/{hash(d.body)}"
