"""Cache-aware routing: a call goes where its prompt prefix is probably still cached.

For every worker the router keeps a *picture* of the prefixes it leased there
recently: the block names (:mod:`.prefixes`) of their prompts, least recently
used first, at most ``route_cache_tokens`` tokens' worth (about the worker's
KV cache). A prompt's blocks are touched deepest first, so a shared prefix
(a system prompt) outlives the conversations that extend it, as leaves go
before their parents in SGLang's radix cache. The picture is approximate:
the router cannot see evictions caused by work it did not send.

Each call goes to one of the workers of its kind and model, chosen in this
order:

1. only workers whose *load* — the service (:mod:`.tuning`) still outstanding
   on the calls they hold, estimated when each was leased from its uncached
   prompt and expected output — exceeds that of the least loaded worker with
   a free slot by at most ``route_balance_tokens`` compete; that one always
   does;
2. among them, the longest cached prefix wins;
3. then the worker that last served the call's program or session (so a
   program stays on its worker while that is reasonable);
4. then the least loaded;
5. then the one whose picture holds the fewest blocks, so that, even on an
   idle fleet, new prefixes spread over the workers instead of evicting each
   other on one.

Full workers compete as well: when the winner is full and the prefix cached
there costs more to recompute (``prefill_weight`` per token) than the call's
own expected output, the call waits in the queue (keeping its place) for a
slot there; otherwise — a short prefix, a winner by program or load alone —
it goes to the best worker with room.

The *interactive lane* (:mod:`.lane`) comes first: while calls of priority
``interactive_priority`` or more are about (one was queued or leased in the
last ``interactive_window`` seconds, or one runs), ``interactive_workers``
workers of each model (never all of them) are reserved: those on standby
(below), else those given the fewest prompt tokens to compute lately (each
leased prompt's uncached tokens, decayed by ``exp(-age / COMPUTING_DECAY)``,
in whole blocks: a prefill in flight cannot be stopped), then the least
loaded. While the lane is closed (once it has been open), the workers it
would reserve stand by: a call with more than ``interactive_standby_tokens``
prompt tokens to compute there (beyond the prefix their picture holds)
neither goes to them nor waits for them, so none of them is in a long prefill
when the lane opens. An interactive call opens its lane before anything else
of its dispatch round is placed (:meth:`CacheRouter.expect`). An interactive call
goes to a reserved worker with a free slot (by the ranking of steps 2-5),
else by the rule above over every worker; other calls see only the workers
not reserved, so they neither go to a reserved worker nor wait for one. With
``interactive_preempt`` the calls a worker holds when it is reserved are
taken back (:meth:`CacheRouter.preempted`) and run again elsewhere.

Tool calls have no prompt: they go to the least loaded tool runner (by
fraction of capacity, as the ``affinity`` router of :mod:`.routing` does).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from aiosd.daemon.leasing.attained import ProgramKey, program_of
from aiosd.daemon.leasing.fleet import Member, able_workers
from aiosd.daemon.leasing.lane import Clock, InteractiveLane
from aiosd.daemon.leasing.prefixes import BLOCK_BYTES, Shape
from aiosd.daemon.leasing.tuning import CHARS_PER_TOKEN, Tuning, expected_output
from aiosd.daemon.store import Doc

#: Programs and sessions whose last worker is remembered.
MAX_REMEMBERED = 10_000
#: Tokens per named block.
BLOCK_TOKENS = BLOCK_BYTES // CHARS_PER_TOKEN
#: Seconds over which a leased prompt's weight as "being computed" falls by a factor e: a GPU prefills a
#: long prompt (one 8k-token chunk) in a few hundred milliseconds, a prefill in flight cannot be stopped,
#: and the interactive lane reserves the worker least likely to be in the middle of one.
COMPUTING_DECAY = 0.5


class Picture:
    """The prefix blocks one worker probably holds, least recently used first."""

    def __init__(self, capacity_blocks: int) -> None:
        self._capacity = max(capacity_blocks, 1)
        self._lru: OrderedDict[int, None] = OrderedDict()

    def match(self, names: memoryview) -> int:
        """How many leading blocks of ``names`` it holds."""
        lru = self._lru
        count = 0
        for name in names:
            if name not in lru:
                break
            count += 1
        return count

    def add(self, names: memoryview) -> None:
        """The worker computed or reused these blocks: they are now its most recent."""
        lru = self._lru
        for name in reversed(names):  # the root last: it is the most recent, evicted last
            if name in lru:
                lru.move_to_end(name)
            else:
                lru[name] = None
        while len(lru) > self._capacity:
            lru.popitem(last=False)

    def __len__(self) -> int:
        return len(self._lru)


class CacheRouter:
    """Picks a worker for each call by cached prefix, program and load; see the module doc."""

    def __init__(self, tuning: Tuning, clock: Clock = time.monotonic) -> None:
        self._tuning = tuning
        self._capacity = tuning.route_cache_tokens // BLOCK_TOKENS
        self.pictures: dict[str, Picture] = {}
        self._outstanding: dict[str, float] = {}  # lease id -> estimated service
        self._last: OrderedDict[ProgramKey, str] = OrderedDict()
        self._members: dict[str, Member] | None = None
        self._loads: dict[str, float] = {}
        #: The cached blocks per worker found for the last call chosen, reused when it is served.
        self._matched: tuple[object, dict[str, int]] = (None, {})
        self._clock = clock
        #: Per worker, (when, prompt tokens given to it to compute, decayed by ``COMPUTING_DECAY`` until then).
        self._computing: dict[str, tuple[float, float]] = {}
        self._lane = InteractiveLane(tuning, self._busy, clock)
        #: Models whose non-interactive calls found no worker outside the lane with room, this round.
        self._no_room: set[object] = set()

    def begin(self, members: dict[str, Member]) -> None:
        """Start a dispatch round over ``members``: their loads, and forget what is gone."""
        default = self._tuning.estimate(0, None)  # a lease granted before a restart
        outstanding: dict[str, float] = {}
        self._loads = {}
        for wid, member in members.items():
            load = 0.0
            for lease in member.leases:
                cost = outstanding[lease] = self._outstanding.get(lease, default)
                load += cost
            self._loads[wid] = load
        self._outstanding = outstanding
        for gone in self.pictures.keys() - members.keys():
            del self.pictures[gone]
        self._members = members
        self._no_room.clear()
        self._lane.begin(members)
        for gone in self._computing.keys() - members.keys():
            del self._computing[gone]

    def expect(self, records: list[Doc]) -> None:
        """The calls this round will place: an interactive one among them opens its lane now, before any call
        is placed, so that no other call goes to the worker it reserves and its revoke goes out first."""
        for record in records:
            if record.get("kind", "llm") == "llm" and self._lane.interactive(record):
                self._lane.saw(record)

    def choose(self, record: Doc, members: dict[str, Member]) -> str | None:
        """The worker to lease ``record`` to now, or ``None``: none can take it, or it waits for its worker."""
        if record.get("kind", "llm") != "llm":
            tools = able_workers(record, members)
            return min(tools, key=lambda wid: (tools[wid].load, -tools[wid].free, wid)) if tools else None
        if members is not self._members:
            self.begin(members)
        interactive = self._lane.saw(record)
        reserved = frozenset[str]() if interactive else self._lane.reserved
        model = (record.get("args") or {}).get("model")
        if reserved and model in self._no_room:
            return None  # slots only fill up within a round: no need to look again
        able = able_workers(record, members)
        if interactive:
            home = [wid for wid in self._lane.reserved if wid in able]
            if home:
                return max(home, key=self._ranking(record, home))
            # Its lane is full (or it has none): the usual rule, over every worker.
        elif reserved:
            able = {wid: m for wid, m in able.items() if wid not in reserved}
            if not able:
                self._no_room.add(model)
        heavy = frozenset[str]() if interactive else self._heavy_for_standby(record)
        able = {wid: m for wid, m in able.items() if wid not in heavy}
        if not able:
            return None
        contenders = self._contenders(record, members, able, reserved | heavy)
        rank = self._ranking(record, contenders)
        best = max(contenders, key=rank)
        if best in able:
            return best
        if self._worth_waiting(record, self._matched[1][best]):
            return None  # its worker is full, not overloaded: the call keeps its place until a slot frees
        return max((wid for wid in contenders if wid in able), key=rank)

    def _contenders(
        self, record: Doc, members: dict[str, Member], able: dict[str, Member], reserved: frozenset[str]
    ) -> list[str]:
        """Workers loaded at most the threshold above the least loaded one with room (full ones included),
        outside the interactive lane."""
        limit = min(self._loads.get(wid, 0.0) for wid in able) + self._tuning.route_balance_tokens
        serving = able_workers(record, members, with_room=False)
        return [wid for wid in serving if self._loads.get(wid, 0.0) <= limit and wid not in reserved]

    def _ranking(self, record: Doc, contenders: list[str]) -> Callable[[str], tuple[int, bool, float, int, str]]:
        """Longest cached prefix, then the program's last worker, then least loaded, then fewest blocks held."""
        names = _names(record)
        matched = {wid: self._match(wid, names) for wid in contenders}
        self._matched = (record.get("_id"), matched)
        program = program_of(record)
        last = self._last.get(program) if program is not None else None
        loads = self._loads
        return lambda wid: (matched[wid], wid == last, -loads.get(wid, 0.0), -self._held(wid), wid)

    def _heavy_for_standby(self, record: Doc) -> frozenset[str]:
        """The workers on standby for the interactive lane on which ``record`` has more prompt tokens to compute
        than ``interactive_standby_tokens``."""
        standby = self._lane.standby
        shape = record.get("shape")
        if not standby or not isinstance(shape, Shape):
            return frozenset()
        limit = self._tuning.interactive_standby_tokens
        if shape.prompt_tokens <= limit:
            return frozenset()
        names = _names(record)
        return frozenset(wid for wid in standby if shape.prompt_tokens - self._match(wid, names) * BLOCK_TOKENS > limit)

    def _worth_waiting(self, record: Doc, blocks: int) -> bool:
        """Whether the prefix cached on a full worker costs more to recompute than the call's own output."""
        shape = record.get("shape")
        if not isinstance(shape, Shape) or not blocks:
            return False
        saved = self._tuning.prefill_weight * min(blocks * BLOCK_TOKENS, shape.prompt_tokens)
        return saved >= expected_output(shape.max_tokens)

    def served(self, record: Doc, worker: str) -> None:
        """``record`` was leased to ``worker``: count its load there and add its prefix to the picture."""
        self._lane.leased(record)
        names = _names(record)
        shape = record.get("shape")
        if isinstance(shape, Shape) and record.get("lease"):
            key, matched = self._matched
            blocks = matched[worker] if key == record.get("_id") and worker in matched else self._match(worker, names)
            cached = min(blocks * BLOCK_TOKENS, shape.prompt_tokens)
            cost = self._tuning.estimate(shape.prompt_tokens - cached, shape.max_tokens)
            self._outstanding[record["lease"]["id"]] = cost
            self._loads[worker] = self._loads.get(worker, 0.0) + cost
            self._computed(worker, shape.prompt_tokens - cached)
        if len(names):
            picture = self.pictures.get(worker)
            if picture is None:
                picture = self.pictures[worker] = Picture(self._capacity)
            picture.add(names)
        program = program_of(record)
        if program is not None:
            self._last[program] = worker
            self._last.move_to_end(program)
            while len(self._last) > MAX_REMEMBERED:
                self._last.popitem(last=False)

    @property
    def reserved(self) -> frozenset[str]:
        """The workers the interactive lane keeps clear of other calls now."""
        return self._lane.reserved

    def preempted(self) -> dict[str, list[str]]:
        """Leases to take back, by worker: the other calls on workers the interactive lane just reserved."""
        return self._lane.revocable(self._members or {})

    def _computed(self, worker: str, tokens: int) -> None:
        """``worker`` was given ``tokens`` prompt tokens to compute now."""
        now = self._clock()
        self._computing[worker] = (now, self._computing_at(worker, now) + tokens)

    def _computing_at(self, worker: str, now: float) -> float:
        """Prompt tokens given to ``worker``, each weighted by ``exp(-age / COMPUTING_DECAY)``."""
        since, tokens = self._computing.get(worker, (now, 0.0))
        return tokens * math.exp(-(now - since) / COMPUTING_DECAY)

    def _busy(self, worker: str) -> tuple[int, float]:
        """How soon ``worker`` could start on a new call: the prompt blocks it was given to compute lately
        (decayed; a prefill in flight cannot be stopped), then its outstanding load."""
        return (int(self._computing_at(worker, self._clock()) // BLOCK_TOKENS), self._loads.get(worker, 0.0))

    def _held(self, worker: str) -> int:
        picture = self.pictures.get(worker)
        return len(picture) if picture is not None else 0

    def _match(self, worker: str, names: memoryview) -> int:
        picture = self.pictures.get(worker)
        return picture.match(names) if picture is not None and len(names) else 0


def _names(record: Doc) -> memoryview:
    shape = record.get("shape")
    return shape.names() if isinstance(shape, Shape) else memoryview(b"").cast("I")
