"""``las``: program-level least attained service (Autellix's PLAS), with aging.

**Rule.** Queued calls go out by ``(-priority, rank)``: priority first (9
before 0, a hard override as in ``priority``), then

    rank = queued_at + min(attained / aging_rate, starvation_bound)

where ``attained`` is the service (:mod:`.tuning`: generated tokens plus
``prefill_weight`` per computed prompt token) that the call's *program* has
received so far. A program is the call's ``program`` id (one agent run; for
agent-program tasks the task id), else its agent's session, else the call
alone (its own earlier time slices). So a program that has used little GPU
goes before one that has used a lot, and short programs are not stuck behind
long ones; ``aging_rate`` tokens of attained service weigh as much as one
second of waiting, so a long program's call is not overtaken for ever.

**Starvation bound.** The push-back is capped at ``starvation_bound``
seconds, so at its priority a queued call is passed over only by calls queued
less than ``starvation_bound`` seconds after it: it waits at most the time to
lease the calls of its priority queued before it or within that window, plus
the work of higher priorities (which override by design, as in ``priority``).

**Approximations.** A call's rank is fixed when it is queued (the lease book
keeps a heap). Attained service is charged when a worker reports usage (a
call settled or a time slice over), so the calls of one program queued
together share the attained service of that moment. Totals are kept, in
memory, for the ``remembered_programs`` most recently charged programs; a
program forgotten starts from zero again, like a new one. A restart forgets
them all.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from aiosd.daemon.leasing.tuning import Tuning
from aiosd.daemon.store import Doc
from aiosd.sdk.protocol import Usage

#: A program's identity: (agent, "program" | "session", id).
ProgramKey = tuple[str, str, str]


class Ledger:
    """Attained service per program, bounded: the least recently charged are forgotten first."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._totals: OrderedDict[ProgramKey, float] = OrderedDict()

    def get(self, key: ProgramKey) -> float:
        """Service ``key`` received so far (0 for a program never charged or forgotten)."""
        return self._totals.get(key, 0.0)

    def add(self, key: ProgramKey, service: float) -> None:
        """Charge ``service`` to ``key``."""
        self._totals[key] = self._totals.get(key, 0.0) + service
        self._totals.move_to_end(key)
        while len(self._totals) > self._limit:
            self._totals.popitem(last=False)

    def __len__(self) -> int:
        return len(self._totals)


def program_of(call: Doc) -> ProgramKey | None:
    """The program a call belongs to, or ``None`` for a lone call."""
    if call.get("program"):
        return (str(call["agent"]), "program", str(call["program"]))
    if call.get("session"):
        return (str(call["agent"]), "session", str(call["session"]))
    return None


class LeastAttained:
    """Program-level least attained service first, aged; see the module doc."""

    name = "las"
    slice_tokens: int | None = None

    def __init__(self, tuning: Tuning) -> None:
        self._tuning = tuning
        self.ledger = Ledger(tuning.remembered_programs)

    def attained(self, call: Doc) -> float:
        """Service the call's program (or, alone, the call itself) has received."""
        program = program_of(call)
        if program is None:
            return self._tuning.service_of(call.get("usage"))
        return self.ledger.get(program)

    def key(self, call: Doc) -> tuple[Any, ...]:
        """Priority descending, then the rank of the module doc; at equal rank the older call."""
        queued = call["queued_at"].timestamp()
        return (-int(call.get("priority") or 0), self._tuning.aged(queued, self.attained(call)), queued)

    def order(self, queued: list[Doc]) -> list[Doc]:
        """``queued`` in key order."""
        return sorted(queued, key=self.key)

    def granted(self, call: Doc) -> None:
        """Nothing to note: service is charged when it is reported."""

    def charge(self, call: Doc, usage: Usage) -> None:
        """A worker reported ``usage`` for a call or slice: its program has received that much more."""
        program = program_of(call)
        if program is not None:  # a lone call's service is its own usage, already on its entry
            self.ledger.add(program, self._tuning.service(usage))
