"""The interactive lane: LLM workers kept clear of batch work while interactive calls are about.

A priority lets an interactive call jump the queue, but once leased it shares
its GPU with every other call running there: a bigger decode batch makes
each of its tokens slower, and every other call's prefill stalls its decode.
The lane gives it a GPU of its own instead. Calls of priority
``interactive_priority`` or more are *interactive*. For each model, the lane
is *open* while an interactive call for it was seen (queued for leasing or
leased) in the last ``interactive_window`` seconds, or one is still running.
While it is open:

- ``interactive_workers`` workers of that model are *reserved*: no new
  non-interactive call is leased to them. They are picked when the lane
  opens, the least busy first (``busy``, the router's measure: see
  :mod:`.cacherouting`), then by name, and stay the same while it is open;
  one that leaves (gone, unhealthy, draining) is replaced;
- interactive calls go to a reserved worker with a free slot when there is
  one, else by the router's usual rule;
- with ``interactive_preempt``, the non-interactive calls a worker holds when
  it is reserved are revoked (:meth:`InteractiveLane.revocable`): its worker
  stops them and they are queued again, to run on the other workers. Without
  it they finish there, and the interactive calls that come meanwhile share
  the GPU with them.

Once it has been open, while it is closed, the workers it would reserve are
on *standby*: the ones it had reserved last (they ran only interactive
calls), else the least busy. A worker on standby still serves the batch, but with
``interactive_standby_tokens`` only calls with at most that many prompt
tokens to compute (the router's estimate, :mod:`.cacherouting`): a GPU cannot
stop a prefill in flight, so the first interactive call after the lane opens
would otherwise wait for a long one (a 6,000-token prompt is a quarter of a
second on an H100) before its own prefill starts.

At least one worker of each model is never reserved (a fleet of one worker
behaves as without the lane), and with no interactive call in the window
every worker serves the batch. ``interactive_workers = 0`` turns it off.
The work per call is constant: a look-up of the call's priority and model,
and the sets of reserved and standby workers recomputed once per dispatch
round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from aiosd.daemon.leasing.fleet import Member
from aiosd.daemon.leasing.tuning import Tuning
from aiosd.daemon.store import Doc

Clock = Callable[[], float]


class InteractiveLane:
    """Which workers are reserved for interactive calls now; see the module doc."""

    def __init__(self, tuning: Tuning, busy: Callable[[str], tuple[float, ...]], clock: Clock = time.monotonic) -> None:
        self._priority = tuning.interactive_priority
        self._wanted = tuning.interactive_workers
        self._window = tuning.interactive_window
        self._preempt = tuning.interactive_preempt
        #: Whether workers on standby are kept clear of long prefills (else the lane takes the least busy).
        self._guarded = tuning.interactive_standby_tokens > 0
        self._busy = busy
        self._clock = clock
        #: Model -> when an interactive call for it was last seen (monotonic seconds).
        self._seen: dict[str, float] = {}
        #: Model -> its reserved workers, while its lane is open.
        self._lanes: dict[str, list[str]] = {}
        #: Interactive calls leased and not settled yet: lease id -> the models it kept open.
        self._running: dict[str, tuple[str, ...]] = {}
        self._groups: dict[str, list[str]] = {}
        #: Workers reserved since :meth:`revocable` was last asked.
        self._fresh: set[str] = set()
        #: Model -> the workers its lane would reserve, while it is closed.
        self._standby: dict[str, list[str]] = {}
        #: Every reserved worker, of every model.
        self.reserved: frozenset[str] = frozenset()
        #: Every worker on standby (its model's lane closed), of every model.
        self.standby: frozenset[str] = frozenset()

    def interactive(self, record: Doc) -> bool:
        """Whether ``record`` is an interactive LLM call (and the lane is on)."""
        return self._wanted > 0 and int(record.get("priority") or 0) >= self._priority

    def begin(self, members: dict[str, Member]) -> None:
        """A dispatch round starts: close lanes past their window, replace reserved workers that left."""
        if self._wanted <= 0:
            return
        self._groups = _serving_groups(members)
        now = self._clock()
        for lease, models in list(self._running.items()):
            if any(lease in m.leases for m in members.values()):
                self._touch(models, now)
            else:
                del self._running[lease]
        for model in list(self._lanes):
            if now - self._seen.get(model, float("-inf")) > self._window:
                standby = self._lanes.pop(model)  # they ran only interactive calls: next in line
                if self._guarded:
                    self._standby[model] = standby
            else:
                self._lanes[model] = self._staffed(model, self._lanes[model])
        if self._guarded:  # models that had interactive calls: a fleet that never gets any pays nothing
            for model in self._seen.keys() & self._groups.keys() - self._lanes.keys():
                self._standby[model] = self._staffed(model, self._standby.get(model, []))
        self._publish()

    def saw(self, record: Doc) -> bool:
        """Note a call the router is placing; ``True`` if it is interactive (it opens or keeps its lane open)."""
        if not self.interactive(record):
            return False
        opened = self._touch(self._models_of(record), self._clock())
        if opened:
            self._publish()
        return True

    def leased(self, record: Doc) -> None:
        """An interactive call was leased: its lane stays open while it runs."""
        lease = record.get("lease")
        if lease and self.interactive(record):
            self._running[lease["id"]] = self._models_of(record)

    def revocable(self, members: dict[str, Member]) -> dict[str, list[str]]:
        """The non-interactive leases held by workers reserved since the last ask, by worker (if preempting)."""
        fresh, self._fresh = self._fresh, set()
        if not self._preempt:
            return {}
        out: dict[str, list[str]] = {}
        for wid in sorted(fresh & self.reserved):
            member = members.get(wid)
            held = sorted(member.leases - self._running.keys()) if member is not None else []
            if held:
                out[wid] = held
        return out

    def _touch(self, models: Iterable[str], now: float) -> bool:
        """Mark ``models``' lanes as used at ``now``; ``True`` if one of them opened."""
        opened = False
        for model in models:
            self._seen[model] = now
            if model not in self._lanes:
                # The workers on standby first: they were kept clear of long prefills for this moment.
                self._lanes[model] = self._staffed(model, self._standby.pop(model, []))
                self._fresh.update(self._lanes[model])
                opened = True
        return opened

    def _staffed(self, model: str, current: list[str]) -> list[str]:
        """``current`` workers still serving ``model``, topped up to the number wanted, never all of them.

        A worker added to an open lane is newly reserved (:meth:`revocable` takes its calls back).
        """
        serving = self._groups.get(model, [])
        keep = [wid for wid in current if wid in serving]
        limit = max(min(self._wanted, len(serving) - 1), 0)
        if len(keep) >= limit:  # the usual case, every round
            return keep[:limit]
        spare = sorted((wid for wid in serving if wid not in keep), key=lambda wid: (self._busy(wid), wid))
        staff = (keep + spare)[:limit]
        if model in self._lanes:
            self._fresh.update(staff[len(keep) :])
        return staff

    def _models_of(self, record: Doc) -> tuple[str, ...]:
        """The models whose workers could serve ``record``: its own, or every one when it names none."""
        model = (record.get("args") or {}).get("model")
        if model:
            return (str(model),)
        return tuple(self._groups)

    def _publish(self) -> None:
        self.reserved = frozenset(wid for workers in self._lanes.values() for wid in workers)
        self.standby = frozenset(wid for workers in self._standby.values() for wid in workers) - self.reserved


def _serving_groups(members: dict[str, Member]) -> dict[str, list[str]]:
    """Healthy, not draining LLM workers by model."""
    groups: dict[str, list[str]] = {}
    for wid, member in members.items():
        state = member.state
        if state.kind == "llm" and state.healthy and not state.draining:
            groups.setdefault(state.model, []).append(wid)
    return groups
