"""Turns between an agent's memory writes and a recount of its memory quota.

Writes (a quota change and the note it pays for) run side by side; a recount
waits until none of the agent's writes is under way and holds new ones back
until it is done, so it never counts a reservation without its note or the
reverse. Other agents are never held back.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class Turns:
    """Shared turns for writes, exclusive ones for recounts, per agent."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._writing: Counter[str] = Counter()
        self._recounting: set[str] = set()

    @contextmanager
    def writing(self, agents: Iterable[str]) -> Iterator[None]:
        """While the agents' writes run (waits for a recount of any of them to finish)."""
        names = sorted(set(agents))
        with self._cond:
            self._cond.wait_for(lambda: self._recounting.isdisjoint(names))
            self._writing.update(names)
        try:
            yield
        finally:
            with self._cond:
                self._writing.subtract(names)
                self._cond.notify_all()

    @contextmanager
    def recounting(self, agent: str) -> Iterator[None]:
        """While the agent's quota is recounted: no write of the agent runs."""
        with self._cond:
            self._cond.wait_for(lambda: agent not in self._recounting)
            self._recounting.add(agent)
            self._cond.wait_for(lambda: self._writing[agent] <= 0)
        try:
            yield
        finally:
            with self._cond:
                self._recounting.discard(agent)
                self._cond.notify_all()
