"""Memory writes of one agent run side by side; its recount runs alone (other agents go on)."""

from __future__ import annotations

import threading
import time

from aiosd.daemon.services.memory.turns import Turns


def test_writes_share_and_a_recount_waits_for_them_and_holds_new_ones() -> None:
    turns = Turns()
    events: list[str] = []
    recount_started = threading.Event()

    def recount() -> None:
        recount_started.set()
        with turns.recounting("ann"):
            events.append("recount")

    def late_write() -> None:
        with turns.writing(["ann"]):
            events.append("late write")

    with turns.writing(["ann"]), turns.writing(["ann", "bob"]):  # two writes of ann at once
        counter = threading.Thread(target=recount)
        counter.start()
        recount_started.wait(5)
        time.sleep(0.05)
        assert events == []  # the recount waits for both writes
        with turns.writing(["bob"]):  # bob's writes are never held back
            events.append("bob write")
    counter.join(5)
    assert events == ["bob write", "recount"]

    with turns.recounting("ann"):
        writer = threading.Thread(target=late_write)
        writer.start()
        time.sleep(0.05)
        assert events == ["bob write", "recount"]  # held back while ann is recounted
    writer.join(5)
    assert events[-1] == "late write"
