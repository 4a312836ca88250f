"""Group commit on the connection thread: deliveries gathered into batches.

The connection thread adds each delivery as it arrives. While no batch of
its kind is being served, a delivery goes on at once: there is nobody to
wait for, and waiting would only add latency. While one is being served,
deliveries gather until it is done (:class:`Serving` then wakes the
connection thread), the batch holds ``max_size`` deliveries, or its oldest
one has waited ``max_wait`` seconds, whichever comes first. Under load a
batch thus holds what arrived while the one before it was served, so the
cost of its round trips downstream is shared by more calls the busier the
scheduler is, and a slow batch holds the next one back by ``max_wait`` at most.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from aiosd.daemon.transport.delivery import Delivery

Flush = Callable[[list[Delivery]], None]


class Batcher:
    """Gathers deliveries; only the connection thread adds, flushes or clears (no locks)."""

    def __init__(self, max_size: int, max_wait: float, flush: Flush, busy: Callable[[], bool] | None = None) -> None:
        self._max_size = max_size
        self._max_wait = max_wait
        self._flush = flush
        self._busy = busy or (lambda: True)
        self._batch: list[Delivery] = []
        self._since = 0.0

    def add(self, delivery: Delivery) -> None:
        """Take one delivery; hand the batch on if it is full or nothing is being served."""
        if not self._batch:
            self._since = time.monotonic()
        self._batch.append(delivery)
        if len(self._batch) >= self._max_size or not self._busy():
            self.flush()

    def wait(self, idle: float) -> float:
        """How long the connection thread may block on I/O before the batch is due."""
        if not self._batch:
            return idle
        return max(0.0, min(idle, self._since + self._max_wait - time.monotonic()))

    def due(self) -> bool:
        """Whether the pending batch has waited long enough, or nothing is being served any more."""
        return bool(self._batch) and (time.monotonic() >= self._since + self._max_wait or not self._busy())

    def flush(self) -> None:
        """Hand the pending deliveries on (if any)."""
        if self._batch:
            batch, self._batch = self._batch, []
            self._flush(batch)

    def clear(self) -> None:
        """Forget the pending deliveries (their connection is gone; the broker redelivers them)."""
        self._batch = []

    def __len__(self) -> int:
        """Deliveries gathered; other threads may read it (a stale figure only costs a spare wake-up)."""
        return len(self._batch)


class Serving:
    """The batches of one kind being served, counted across threads.

    When the last one is done while deliveries gathered meanwhile, ``wake``
    makes the connection thread hand them on at once instead of at
    ``max_wait``. A delivery added after the count fell to zero goes on by
    itself (:meth:`Batcher.add` asks :meth:`busy` after adding), so a wake-up
    is never lost between the two threads.
    """

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def busy(self) -> bool:
        """Whether a batch of this kind is being served."""
        with self._lock:
            return self._count > 0

    def started(self) -> None:
        """A batch was handed on."""
        with self._lock:
            self._count += 1

    def done(self, gathered: Batcher, wake: Callable[[], None] | None) -> None:
        """A batch was served: wake the connection thread if it was the last and others gathered."""
        with self._lock:
            self._count -= 1
            free = self._count == 0
        if free and len(gathered) and wake is not None:
            wake()
