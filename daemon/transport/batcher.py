"""Group commit on the connection thread: deliveries gathered into batches.

The connection thread adds each delivery as it arrives; a batch is handed
on when it holds ``max_size`` deliveries or its oldest one has waited
``max_wait`` seconds, whichever comes first, so deliveries that arrive close
together share one round trip per collection downstream. Under light load
(the last batch held one delivery) and while no batch is being served
(``idle``), a delivery goes on at once: there is nobody to wait for, and
waiting would only add latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiosd.daemon.transport.delivery import Delivery

Flush = Callable[[list[Delivery]], None]


class Batcher:
    """Gathers deliveries; used by the connection thread only (no locks)."""

    def __init__(self, max_size: int, max_wait: float, flush: Flush, idle: Callable[[], bool] | None = None) -> None:
        self._max_size = max_size
        self._max_wait = max_wait
        self._flush = flush
        self._idle = idle or (lambda: False)
        self._last = 0
        self._batch: list[Delivery] = []
        self._since = 0.0

    def add(self, delivery: Delivery) -> None:
        """Take one delivery; hand the batch on if it is full."""
        if not self._batch:
            self._since = time.monotonic()
        self._batch.append(delivery)
        if len(self._batch) >= self._max_size or self._quiet():
            self.flush()

    def wait(self, idle: float) -> float:
        """How long the connection thread may block on I/O before the batch is due."""
        if not self._batch:
            return idle
        return max(0.0, min(idle, self._since + self._max_wait - time.monotonic()))

    def due(self) -> bool:
        """Whether the pending batch has waited long enough."""
        return bool(self._batch) and (time.monotonic() >= self._since + self._max_wait or self._quiet())

    def _quiet(self) -> bool:
        return self._last <= 1 and self._idle()

    def flush(self) -> None:
        """Hand the pending deliveries on (if any)."""
        if self._batch:
            batch, self._batch = self._batch, []
            self._last = len(batch)
            self._flush(batch)

    def clear(self) -> None:
        """Forget the pending deliveries (their connection is gone; the broker redelivers them)."""
        self._batch = []

    def __len__(self) -> int:
        return len(self._batch)
