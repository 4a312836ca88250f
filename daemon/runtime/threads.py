"""The syscall threads: a pool that serves syscalls and counts what is still in flight."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from aiosd.sdk.process.logs import get_logger

log = get_logger(__name__)


class SyscallThreads:
    """Runs work off the AMQP thread; :attr:`inflight` tells shutdown what it is waiting for."""

    def __init__(self, threads: int) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="aiosd-syscall")
        self._inflight: set[Future[None]] = set()
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on a syscall thread, tracked as in-flight work; an exception is logged, not raised."""
        fut = self._executor.submit(_guarded, fn)
        with self._lock:
            self._inflight.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: Future[None]) -> None:
        with self._lock:
            self._inflight.discard(fut)

    @property
    def inflight(self) -> int:
        """Tasks submitted and not finished."""
        with self._lock:
            return len(self._inflight)

    def shutdown(self) -> None:
        """Drop work that never started; do not wait for running work (shutdown already did)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _guarded(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        log.exception("task_failed")
