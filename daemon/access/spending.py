"""Tokens and LLM calls added up per agent before they are written.

Both the token charges of the quota periods (:class:`~.authorizer.Meter`)
and the agents' lifetime totals (:mod:`aiosd.daemon.leasing.totals`) add up
answered calls in memory and write them in batches.
"""

from __future__ import annotations

from aiosd.sdk.protocol import Usage

#: Per agent: the tokens and the number of LLM calls not written yet.
Spent = dict[str, tuple[Usage, int]]


def tally(into: Spent, agent: str, usage: Usage, calls: int = 1) -> None:
    """Add ``calls`` LLM calls that used ``usage`` to ``agent``'s entry of ``into``."""
    total, count = into.get(agent, (Usage(), 0))
    into[agent] = (total.plus(usage), count + calls)
