"""Periodic housekeeping jobs run on the scheduler's threads.

The scheduler's loop calls :meth:`Periodic.tick` often; a job that is due is
handed to the thread pool, and a job still running is not started again, so
a slow database makes jobs late, never piled up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from aiosd.sdk.process.logs import get_logger

log = get_logger(__name__)


@dataclass
class _Job:
    name: str
    interval: float
    fn: Callable[[], object]
    due: float = field(default_factory=time.monotonic)
    running: bool = False


class Periodic:
    """A set of jobs, each run every ``interval`` seconds at most once at a time."""

    def __init__(self, submit: Callable[[Callable[[], None]], None]) -> None:
        self._submit = submit
        self._jobs: list[_Job] = []
        self._lock = threading.Lock()

    def every(self, interval: float, name: str, fn: Callable[[], object]) -> None:
        """Run ``fn`` every ``interval`` seconds (first run at the first tick)."""
        self._jobs.append(_Job(name, interval, fn))

    def tick(self) -> None:
        """Start the jobs that are due and not running."""
        now = time.monotonic()
        for job in self._jobs:
            with self._lock:
                if job.running or now < job.due:
                    continue
                job.running = True
                job.due = now + job.interval
            self._submit(partial(self._run, job))

    def _run(self, job: _Job) -> None:
        try:
            job.fn()
        except Exception:  # a failing job must not stop the others; it runs again when due
            log.exception("periodic_job_failed", job=job.name)
        finally:
            with self._lock:
                job.running = False
