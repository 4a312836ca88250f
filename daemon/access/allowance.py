"""Request counts taken ahead: one conditional write admits the next calls too.

Every syscall counts against its agent's rate window and quota period. Written
one by one, that is a ``findAndModify`` per batch on the hot path, the cost
of a database round trip on every call. When an agent's calls come quickly,
:class:`Allowances` reserves a *block* instead: the calls asked for plus what
the agent asked for in the last :data:`LEAD` seconds, at most
:data:`AHEAD_MAX` and at most an eighth of what the limit had left at the
last reservation, in the same conditional ``$inc`` that checks the limit
(see :class:`~aiosd.daemon.access.counters.Counters`). The next calls are
admitted from the block in memory.

What it guarantees:

- No more calls are admitted than the limit allows, by any number of
  schedulers: each admitted call was first counted in the shared document by
  an update that only matches below the limit.
- One scheduler admits exactly as many as the limit allows: a block that
  does not fit is not taken (the calls asked for are reserved alone), and
  blocks shrink to nothing as the limit nears.
- A counter runs ahead of the calls admitted by at most the unused blocks,
  :data:`AHEAD_MAX` per counter and scheduler. An unused block is given
  back once unused for :data:`IDLE` seconds, when the agents' directory
  changes (before anything is admitted under the new policy) and at
  shutdown. A crash leaves it counted: the agent may be refused up to that
  many calls early until the window or period ends.

A counter without a limit cannot refuse anything, so its calls are added up
in memory and written by :meth:`Allowances.settle` (one write per counter);
a crash loses those last counts (at most :data:`~aiosd.daemon.runtime.wiring.CHARGE_INTERVAL`
worth), as it loses the last token charges.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from aiosd.daemon.access.counters import Counters
from aiosd.daemon.store import Doc

#: The most calls one block reserves beyond those asked for.
AHEAD_MAX = 64
#: A block covers the calls of about this many seconds at the agent's recent pace.
LEAD = 0.5
#: Seconds a block may stay unused before it is given back.
IDLE = 1.0
#: The shortest span a pace is measured over (so one quick pair of calls does not look like a flood).
MIN_SPAN = 0.05
_STRIPES = 64

Clock = Callable[[], float]


@dataclass(frozen=True)
class Counter:
    """One counter document and the field a limit applies to.

    ``fields`` are the fields every write touches (so each exists), ``field``
    the one counted.
    """

    key: str
    field: str
    fields: tuple[str, ...]
    extra: Doc

    def amounts(self, n: int) -> dict[str, int]:
        """An increment of ``n`` of the counted field (zeros elsewhere)."""
        return {f: n if f == self.field else 0 for f in self.fields}


@dataclass
class _Block:
    """What one scheduler holds of a limited counter."""

    counter: Counter
    #: Reserved in the document and not handed out yet.
    left: int = 0
    #: Handed out since the last reservation, and when that was: the agent's pace.
    taken: int = 0
    since: float = 0.0
    #: When a call was last handed out.
    used: float = 0.0
    #: What the limit had left after the last reservation (``None`` before the first).
    room: int | None = None


@dataclass
class _Tally:
    """Calls counted in memory against a counter without a limit."""

    counter: Counter
    n: int = 0


class Allowances:
    """Blocks of limited counters held by this scheduler, and counts of unlimited ones; see the module doc."""

    def __init__(self, counters: Counters, clock: Clock = time.monotonic) -> None:
        self._counters = counters
        self._clock = clock
        self._blocks: dict[str, _Block] = {}
        self._tallies: dict[str, _Tally] = {}
        self._lock = threading.Lock()  # guards the two dicts, never held over a database call
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]

    def take(self, counter: Counter, n: int, limit: int | None) -> bool:
        """Count ``n`` calls against ``counter``; ``False`` (nothing counted) if the limit refuses them."""
        if limit is None:
            with self._lock:
                self._tallies.setdefault(counter.key, _Tally(counter)).n += n
            return True
        with self._stripe(counter.key):
            with self._lock:
                block = self._blocks.setdefault(counter.key, _Block(counter))
            now = self._clock()
            if block.left < n and not self._reserve(block, n - block.left, limit, now):
                return False
            block.left -= n
            block.taken += n
            block.used = now
            return True

    def give(self, counter: Counter, n: int, limit: int | None) -> None:
        """Return ``n`` calls taken from ``counter`` and not admitted after all (another limit refused them)."""
        if limit is None:
            with self._lock:
                tally = self._tallies.get(counter.key)
                if tally is not None:
                    tally.n -= n
            return
        with self._stripe(counter.key):
            with self._lock:
                block = self._blocks.get(counter.key)
            if block is None:  # given back meanwhile: return them to the document
                self._counters.add(counter.key, counter.amounts(-n), counter.extra)
            else:
                block.left += n
                block.taken -= n

    def settle(self, everything: bool = False) -> None:
        """Write the counts of unlimited counters; give back blocks unused for :data:`IDLE` seconds (or all)."""
        with self._lock:
            tallies, self._tallies = self._tallies, {}
            blocks = list(self._blocks.values())
        for tally in tallies.values():
            if tally.n:
                self._counters.add(tally.counter.key, tally.counter.amounts(tally.n), tally.counter.extra)
        now = self._clock()
        for block in blocks:
            if everything or now - block.used >= IDLE:
                self._give_back(block.counter.key, everything, now)

    def held(self) -> int:
        """Calls reserved and not handed out, over every counter (for tests and metrics)."""
        with self._lock:
            return sum(b.left for b in self._blocks.values())

    def _give_back(self, key: str, everything: bool, now: float) -> None:
        with self._stripe(key):
            with self._lock:
                block = self._blocks.get(key)
                if block is None or not (everything or now - block.used >= IDLE):
                    return  # used again meanwhile
                del self._blocks[key]
            if block.left:
                # With the document's fields: a window pruned meanwhile comes back with its expiry, to be pruned again.
                self._counters.add(key, block.counter.amounts(-block.left), block.counter.extra)

    def _reserve(self, block: _Block, need: int, limit: int, now: float) -> bool:
        """Reserve ``need`` calls and, where they fit, a block ahead; ``False`` if even ``need`` does not fit."""
        ahead = self._ahead(block, now)
        counter = block.counter
        doc = None
        for amount in (need + ahead, need) if ahead else (need,):
            doc = self._counters.reserve(counter.key, counter.amounts(amount), {counter.field: limit}, counter.extra)
            if doc is not None:
                block.left += amount
                break
        if doc is None:
            return False
        block.room = limit - int(doc.get(counter.field) or 0)
        block.taken, block.since = 0, now
        return True

    def _ahead(self, block: _Block, now: float) -> int:
        """How many calls to reserve beyond those asked for: the agent's pace over :data:`LEAD`, bounded."""
        if block.room is None:
            return 0
        pace = block.taken / max(now - block.since, MIN_SPAN)
        return max(0, min(AHEAD_MAX, block.room // 8, int(pace * LEAD)))

    def _stripe(self, key: str) -> threading.Lock:
        return self._stripes[zlib.crc32(key.encode()) % _STRIPES]
