"""An asyncio event loop in a second thread, where every backend coroutine runs.

The worker's main thread owns the AMQP connection (pika's blocking adapter,
like the scheduler's) and must keep pumping it; backends are asyncio code.
So the loop lives in its own thread and the main thread hands it coroutines
with :meth:`Runner.submit`, getting back a thread-safe
:class:`concurrent.futures.Future` whose done-callbacks run in the loop's
thread -- they must hand results back to the main thread, never touch pika.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiosd.sdk.process.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")


class Runner:
    """One event loop in one daemon thread: start it, submit coroutines, stop it."""

    def __init__(self, name: str = "aiosd-runner") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Runner:
        """Start the loop's thread."""
        self._thread.start()
        return self

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; cancelling the future cancels its task."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (start-up and shutdown only)."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what still runs, stop the loop and join its thread (idempotent)."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("runner_thread_still_busy")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        loop = self._loop
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            # Waits for backend threads (llama.cpp stops a cancelled call at its next token).
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
