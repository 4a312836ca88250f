"""Routing: which worker gets a call.

Two routers, chosen by the ``routing`` setting:

- ``cache_aware`` (:class:`~.cacherouting.CacheRouter`, the default): the
  worker with the longest cached prefix of the call's prompt, unless its
  load exceeds the least loaded worker's by a threshold, and an interactive
  lane (:mod:`.lane`) that keeps workers clear for interactive calls; see
  that module.
- ``affinity`` (:class:`Router`): a call whose session, or else system
  prompt, a worker served recently goes back to that worker, whose
  radix/prefix cache already holds the prefix, unless that worker is busier
  than the least loaded one by more than ``slack`` calls. Otherwise the least
  loaded worker (by fraction of capacity) wins.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Protocol

from aiosd.daemon.leasing.cacherouting import CacheRouter
from aiosd.daemon.leasing.fleet import Member, able_workers
from aiosd.daemon.leasing.tuning import Tuning
from aiosd.daemon.store import Doc

MAX_REMEMBERED = 10_000


class Routing(Protocol):
    """What the dispatcher asks of a router."""

    def begin(self, members: dict[str, Member]) -> None:
        """A dispatch round over ``members`` starts."""
        ...

    def expect(self, records: list[Doc]) -> None:
        """The calls this round will place (after :meth:`begin`, before any :meth:`choose`)."""
        ...

    def choose(self, record: Doc, members: dict[str, Member]) -> str | None:
        """The worker to lease ``record`` to, or ``None`` if none can take it."""
        ...

    def served(self, record: Doc, worker: str) -> None:
        """``record`` was leased to ``worker``."""
        ...

    def preempted(self) -> dict[str, list[str]]:
        """Leases to take back from their workers (revoked), by worker; asked once per dispatch round."""
        ...


class Router:
    """Picks a worker for each call; remembers which worker served which prefix."""

    def __init__(self, slack: int) -> None:
        self._slack = slack
        self._seen: OrderedDict[str, str] = OrderedDict()

    def begin(self, members: dict[str, Member]) -> None:
        """Nothing to prepare: loads are counted in calls, read from ``members``."""

    def expect(self, records: list[Doc]) -> None:
        """Nothing to prepare."""

    def choose(self, record: Doc, members: dict[str, Member]) -> str | None:
        """The worker to lease ``record`` to, or ``None`` if none can take it."""
        able = able_workers(record, members)
        if not able:
            return None
        least = min(able, key=lambda wid: (able[wid].load, -able[wid].free, wid))
        key = affinity_key(record)
        preferred = self._seen.get(key) if key else None
        if preferred in able and len(able[preferred].leases) <= len(able[least].leases) + self._slack:
            return preferred
        return least

    def served(self, record: Doc, worker: str) -> None:
        """Remember that ``worker`` now holds ``record``'s prefix."""
        key = affinity_key(record)
        if key is None:
            return
        self._seen[key] = worker
        self._seen.move_to_end(key)
        while len(self._seen) > MAX_REMEMBERED:
            self._seen.popitem(last=False)

    def preempted(self) -> dict[str, list[str]]:
        """Nothing: this router keeps no worker for interactive calls."""
        return {}


def affinity_key(record: Doc) -> str | None:
    """The prefix a call shares with others: its session, else its system prompt."""
    if "affinity" in record:  # computed when the call was queued (see :mod:`.book`)
        return str(record["affinity"]) if record["affinity"] else None
    if record.get("session"):
        return f"session:{record['agent']}:{record['session']}"
    messages = (record.get("args") or {}).get("messages") or []
    system = next((m.get("content") or "" for m in messages if m.get("role") == "system"), "")
    if not system:
        return None
    return "system:" + hashlib.sha256(system.encode()).hexdigest()[:32]


def make_router(name: str, slack: int, tuning: Tuning | None = None) -> Routing:
    """The router called ``name`` (a Settings value)."""
    if name == "cache_aware":
        return CacheRouter(tuning or Tuning())
    if name == "affinity":
        return Router(slack)
    raise ValueError(f"unknown routing {name!r}")
