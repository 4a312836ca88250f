"""Group commit on the connection thread: deliveries gathered into batches.

The connection thread adds each delivery as it arrives. While no batch of
its kind is being served, a delivery goes on at once: there is nobody to
wait for, and waiting would only add latency. While one is being served,
deliveries gather until it is done (the scheduler then wakes the connection
thread), the batch holds ``max_size`` deliveries, or its oldest one has
waited ``max_wait`` seconds, whichever comes first. Under load a batch thus
holds what arrived while the one before it was served, so the cost of its
round trips downstream is shared by more calls the busier the scheduler is,
and a slow batch holds the next one back by ``max_wait`` at most. A delivery
of ``urgent`` priority or more goes on at once, with what gathered before it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiosd.daemon.transport.delivery import Delivery

Flush = Callable[[list[Delivery]], None]


class Batcher:
    """Gathers deliveries; used by the connection thread only (no locks)."""

    def __init__(
        self,
        max_size: int,
        max_wait: float,
        flush: Flush,
        busy: Callable[[], bool] | None = None,
        urgent: int | None = None,
    ) -> None:
        self._max_size = max_size
        self._max_wait = max_wait
        self._flush = flush
        self._busy = busy or (lambda: True)
        self._urgent = urgent
        self._batch: list[Delivery] = []
        self._since = 0.0

    def add(self, delivery: Delivery) -> None:
        """Take one delivery; hand the batch on if it is full, urgent or nothing is being served."""
        if not self._batch:
            self._since = time.monotonic()
        self._batch.append(delivery)
        if len(self._batch) >= self._max_size or self._is_urgent(delivery) or not self._busy():
            self.flush()

    def wait(self, idle: float) -> float:
        """How long the connection thread may block on I/O before the batch is due."""
        if not self._batch:
            return idle
        return max(0.0, min(idle, self._since + self._max_wait - time.monotonic()))

    def due(self) -> bool:
        """Whether the pending batch has waited long enough, or nothing is being served any more."""
        return bool(self._batch) and (time.monotonic() >= self._since + self._max_wait or not self._busy())

    def _is_urgent(self, delivery: Delivery) -> bool:
        return self._urgent is not None and (delivery.priority or 0) >= self._urgent

    def flush(self) -> None:
        """Hand the pending deliveries on (if any)."""
        if self._batch:
            batch, self._batch = self._batch, []
            self._flush(batch)

    def clear(self) -> None:
        """Forget the pending deliveries (their connection is gone; the broker redelivers them)."""
        self._batch = []

    def __len__(self) -> int:
        return len(self._batch)
