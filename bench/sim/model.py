"""What the simulated model says, and when it stops.

The model repeats ``REPLY`` ("This is a simulated answer. "), one 4-byte word per
token, so output token ``i`` is ``WORDS[i % len(WORDS)]``. It continues a
sliced generation exactly: the trailing run of those words at the end of the
input is what it already said (``already_said``), and it goes on from there.

Its length, in this order:

1. a stop string of ``sampling_params.stop`` that the reply would contain ends
   it there (finish ``stop``; the text is cut before the stop string, as SGLang does);
2. ``[[sim:out=N]]`` in the input (the last one counts) makes it stop after
   ``N`` tokens in all (finish ``stop``, as if it produced its end-of-turn token);
   without one, ``default_output`` (when set) plays that role;
3. otherwise, or when the budget is smaller, it runs to the budget
   (``max_new_tokens``; finish ``length``).

The directive lets a benchmark give each call a true output length that the
scheduler cannot see (it sees only ``max_tokens``), as with a real model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import tokenizer

REPLY = "This is a simulated answer. "
WORDS = tuple(REPLY[i : i + 4] for i in range(0, len(REPLY) - 3, 4))
WORD_IDS = tuple(tokenizer.word_id(w) for w in WORDS)
_WORD_SET = frozenset(WORD_IDS)
#: Llama 3's ``<|eot_id|>``: the id a ``stop`` finish reports as matched.
EOS_ID = 128009
DIRECTIVE = re.compile(r"\[\[sim:out=(\d+)\]\]")

if "".join(WORDS) != REPLY or any(len(w.encode()) != 4 for w in WORDS):  # pragma: no cover
    raise ImportError("REPLY must be whole 4-byte words")


@dataclass(frozen=True)
class Plan:
    """One call's output: where it starts, how many tokens, and why it ends."""

    start: int  # output position of the first new token (tokens already said)
    tokens: int  # new tokens this call produces
    finish: dict[str, Any]  # SGLang's finish_reason for the end
    cut: str | None = None  # a matched stop string: the text ends before it

    def output_ids(self) -> list[int]:
        """The new tokens' ids."""
        n = len(WORD_IDS)
        return [WORD_IDS[i % n] for i in range(self.start, self.start + self.tokens)]

    def text(self, produced: int | None = None) -> str:
        """The text of the first ``produced`` new tokens (all by default), never past a matched stop string."""
        count = self.tokens if produced is None else produced
        text = output_text(self.start, count)
        if self.cut is not None:
            text = text[: output_text(self.start, self.tokens).find(self.cut)]
        return text


def output_text(start: int, count: int) -> str:
    """The reply text from output position ``start``, ``count`` tokens long."""
    n = len(WORDS)
    return "".join(WORDS[i % n] for i in range(start, start + count))


def already_said(ids: Sequence[int]) -> int:
    """How many tokens at the end of ``ids`` are this model's own earlier output."""
    run = 0
    while run < len(ids) and ids[len(ids) - 1 - run] in _WORD_SET:
        run += 1
    n = len(WORD_IDS)
    for k in range(run, 0, -1):
        tail = ids[len(ids) - k :]
        if all(tail[i] == WORD_IDS[i % n] for i in range(k)):
            return k
    return 0


def plan(
    ids: Sequence[int],
    budget: int,
    stop: Sequence[str] = (),
    default_output: int | None = None,
    *,
    eos: bool = True,
) -> Plan:
    """The output for input ``ids`` with at most ``budget`` new tokens (``budget`` >= 1).

    ``eos=False`` (SGLang's ``ignore_eos``) ignores the directive and ``default_output``.
    """
    start = already_said(ids)
    wanted = default_output if eos else None
    found = DIRECTIVE.findall(tokenizer.decode(ids[: len(ids) - start])) if eos else []
    if found:
        wanted = int(found[-1])
    tokens, finish = budget, {"type": "length", "length": budget}
    if wanted is not None and wanted - start <= budget:
        tokens, finish = max(wanted - start, 1), {"type": "stop", "matched": EOS_ID}
    cut = None
    if stop:
        text = output_text(start, tokens)
        ends = [(text.find(s) + len(s), s) for s in stop if s and s in text]
        if ends:
            end, cut = min(ends)
            tokens = -(-end // 4)  # the token that completes the stop string
            finish = {"type": "stop", "matched": cut}
    return Plan(start=start, tokens=tokens, finish=finish, cut=cut)
