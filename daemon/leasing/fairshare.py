"""``fair``: weighted fair share of the workers per agent (start-time fair queueing), with aging.

**Rule.** Every agent has a weight (its policy's ``weight``, default 1) and a
finish tag ``F`` in *virtual time* (service per unit of weight; service as in
:mod:`.tuning`). A call queued by agent *a* gets the start tag
``S = max(V, F_a)`` and reserves its estimated service ``e`` (prompt and
``max_tokens``): ``F_a = S + e / w_a``. ``V``, the fleet's virtual time, is
the largest start tag of the calls leased so far, so an agent that was idle
gets no credit for it. When the worker reports the call's usage, ``F_a`` is
corrected by ``(actual - e) / w_a``. Calls go out by ``(-priority, rank)``:
priority first (a hard override for interactive work), then

    rank = queued_at + min((S - V) / aging_rate, starvation_bound)

so an agent that is ahead of the others by ``x`` tokens of weighted service
waits ``x / aging_rate`` seconds longer: among backlogged agents, calls go out
in proportion to the weights (an agent of weight 2 gets two calls' worth for
every one of an agent of weight 1), while an agent with nothing queued gets
its next call out almost at once.

**Starvation bound.** As in ``las``: the push-back is capped, so at its
priority a call is passed over only by calls queued less than
``starvation_bound`` seconds after it. Shares follow the weights within that
window; beyond it, calls go first come, first served.

**Approximations.** Tags are fixed when a call is queued; a call that fails
or expires keeps its reservation. Finish tags are kept for the
``remembered_programs`` most recently active agents (a forgotten agent starts
at ``V`` like an idle one).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiosd.daemon.access.authorizer import PolicyLookup
from aiosd.daemon.leasing.prefixes import Shape
from aiosd.daemon.leasing.tuning import Tuning
from aiosd.daemon.store import Doc
from aiosd.sdk.protocol import Usage

#: An agent's share weight.
WeightOf = Callable[[str], float]
#: Weights below this count as this: a zero weight would make an agent's tags infinite.
MIN_WEIGHT = 1e-3


class FairShare:
    """Weighted fair share per agent, aged; see the module doc."""

    name = "fair"
    slice_tokens: int | None = None

    def __init__(self, tuning: Tuning, weight_of: WeightOf | None = None) -> None:
        self._tuning = tuning
        self._weight_of = weight_of or (lambda _agent: 1.0)
        self._finish: OrderedDict[str, float] = OrderedDict()
        self.vtime = 0.0

    def key(self, call: Doc) -> tuple[Any, ...]:
        """Tag the call (once per queueing: the book calls this when it queues it) and rank it."""
        shape = _shape(call)
        agent = str(call["agent"])
        weight = max(self._weight_of(agent), MIN_WEIGHT)
        start = max(self.vtime, self._finish.get(agent, 0.0))
        shape.tag = start
        shape.reserved = self._tuning.estimate(shape.prompt_tokens, shape.max_tokens)
        self._set_finish(agent, start + shape.reserved / weight)
        queued = call["queued_at"].timestamp()
        return (-int(call.get("priority") or 0), self._tuning.aged(queued, start - self.vtime), queued)

    def order(self, queued: list[Doc]) -> list[Doc]:
        """``queued`` in key order (each call is tagged as if queued in list order)."""
        keys = {id(call): self.key(call) for call in queued}
        return sorted(queued, key=lambda call: keys[id(call)])

    def granted(self, call: Doc) -> None:
        """A call went to a worker: virtual time reaches its start tag."""
        shape = call.get("shape")
        if isinstance(shape, Shape):
            self.vtime = max(self.vtime, shape.tag)

    def charge(self, call: Doc, usage: Usage) -> None:
        """A worker reported ``usage``: replace the call's reservation by what it really used."""
        shape = _shape(call)
        agent = str(call["agent"])
        weight = max(self._weight_of(agent), MIN_WEIGHT)
        used = self._tuning.service(usage) - shape.reserved
        shape.reserved = 0.0  # a later slice of the same queueing is charged in full
        self._set_finish(agent, self._finish.get(agent, self.vtime) + used / weight)

    def finish_tag(self, agent: str) -> float:
        """The agent's finish tag (``V`` if it has none)."""
        return self._finish.get(agent, self.vtime)

    def _set_finish(self, agent: str, tag: float) -> None:
        self._finish[agent] = tag
        self._finish.move_to_end(agent)
        while len(self._finish) > self._tuning.remembered_programs:
            self._finish.popitem(last=False)


def _shape(call: Doc) -> Shape:
    """The call's shape; a call queued without one (rebuilt after a restart) gets an empty one."""
    shape = call.get("shape")
    if not isinstance(shape, Shape):
        shape = call["shape"] = Shape()
    return shape


def policy_weights(policies: PolicyLookup) -> WeightOf:
    """Agents' share weights from their policies (1 for an agent without one)."""

    def weight_of(agent: str) -> float:
        standing = policies.standing(agent)
        return float(standing.policy.weight) if standing is not None else 1.0

    return weight_of
