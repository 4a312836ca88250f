"""Graceful stop: SIGTERM/SIGINT while busy finishes in-flight work, exits 0, loses nothing."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from .harness import SchedulerProcess, World, unfinished_count
from .test_crash import (
    Calls,
    assert_all_done_exactly_once,
    completed,
    wait_for_completed,
)

SHUTDOWN_TIMEOUT = 30.0
#: Time for the interpreter to exit after the shutdown deadline.
EXIT_SLACK = 15.0


@pytest.mark.parametrize(("sig", "count"), [(signal.SIGTERM, 300), (signal.SIGINT, 150)], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_while_busy_finishes_in_flight_work_and_loses_nothing(
    world: World, make_scheduler: Callable[..., SchedulerProcess], sig: signal.Signals, count: int
) -> None:
    # A small prefetch keeps most calls queued in RabbitMQ when the signal comes: in flight
    # are at most 16, so the test sees both finished in-flight work and work left for later.
    first = make_scheduler(shutdown_timeout=SHUTDOWN_TIMEOUT, prefetch="16", batch_size="8").start()
    calls = Calls(world, count)
    wait_for_completed(world, 20)

    first.signal(sig)
    assert first.wait(SHUTDOWN_TIMEOUT + EXIT_SLACK) == 0
    events = {e["event"]: e for e in first.events()}
    assert events["stop_requested"]["signal"] == sig.name
    assert "scheduler_stopping" in events
    assert events["scheduler_stopped"]["unfinished"] == 0

    # In-flight work was finished, not abandoned: no record is left half-done ...
    done = completed(world)
    assert unfinished_count(world.db()) == 0
    assert done < count, "the scheduler finished everything before the signal; nothing was tested"
    # ... and each finished call's reply went out before the process exited.
    deadline = time.monotonic() + 15
    while len(calls.arrived) < done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(calls.arrived) == done

    make_scheduler().start()
    assert_all_done_exactly_once(world, calls.result(), count)
