"""What scheduling and routing know of a queued LLM call: its prompt's prefix blocks and sizes.

A prompt (its messages, rendered as role and content) is cut into blocks of
``BLOCK_CHARS`` characters (~128 tokens); block *i* is named by a hash of
(block *i-1*'s name, its text), so a name stands for the whole prefix up to
it, as in vLLM's and SGLang's prefix caches. Two calls share a cached prefix
on a worker as far as their leading names agree. Only full blocks are named
(the tail of a prompt is new to the worker anyway), and only the first
``MAX_BLOCKS`` (~16k tokens): prompts that agree that far are alike enough
for routing. Names are Python's 64-bit string hashes, salted per process —
they live only in this scheduler's memory — packed into one ``bytes`` so a
queued call costs 8 bytes per block.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiosd.daemon.leasing.tuning import CHARS_PER_TOKEN

#: Characters per named block (~128 tokens): coarse enough to be cheap, fine next to an agent's prompt.
BLOCK_CHARS = 512
#: Blocks named per prompt (64k characters).
MAX_BLOCKS = 128
#: Between a message's role and its content, and after each message: never inside normal text.
_ROLE_END, _MESSAGE_END = "\x1f", "\x1e"


@dataclass(slots=True)
class Shape:
    """A queued call's size and prefix, and the per-queueing state of the fair-share policy."""

    blocks: bytes = b""
    prompt_tokens: int = 0
    max_tokens: int | None = None
    #: ``fair``: the call's start tag in virtual time, and the service reserved for it when queued.
    tag: float = 0.0
    reserved: float = 0.0

    def names(self) -> memoryview:
        """The block names, in prompt order."""
        return memoryview(self.blocks).cast("q")


def shape_of(messages: Iterable[Any], max_tokens: Any = None) -> Shape:
    """The shape of an LLM call with these (already fitted) messages."""
    text = render(messages)
    limit = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None
    return Shape(prefix_blocks(text), len(text) // CHARS_PER_TOKEN, limit)


def render(messages: Iterable[Any]) -> str:
    """The prompt as one string: roles and contents in order (what every chat template keeps)."""
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        text = content if isinstance(content, str) else ("" if content is None else str(content))
        parts += (str(message.get("role") or ""), _ROLE_END, text, _MESSAGE_END)
    return "".join(parts)


def prefix_blocks(text: str) -> bytes:
    """Chained hashes of ``text``'s full blocks, packed as native 64-bit integers."""
    names = array("q")
    name = 0
    for start in range(0, min(len(text) // BLOCK_CHARS, MAX_BLOCKS) * BLOCK_CHARS, BLOCK_CHARS):
        name = hash((name, text[start : start + BLOCK_CHARS]))
        names.append(name)
    return names.tobytes()
