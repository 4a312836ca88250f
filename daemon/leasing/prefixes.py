"""What scheduling and routing know of a queued LLM call: its prompt's prefix blocks and sizes.

A prompt (its messages, rendered as role and content, UTF-8) is cut into
blocks of ``BLOCK_BYTES`` bytes (~256 tokens); block *i* is named by the
CRC-32 of the whole prompt up to its end (computed incrementally from block
*i-1*'s name), so a name stands for the whole prefix, as in vLLM's and
SGLang's prefix caches. Two calls share a cached prefix on a worker as far as
their leading names agree. Only full blocks are named (the tail of a prompt
is new to the worker anyway), and only the first ``MAX_BLOCKS`` (~16k
tokens): prompts that agree that far are alike enough for routing. CRC-32 is
the cheapest chained hash in the standard library (a few microseconds for a
long prompt, on the syscall path); its 32 bits make a false match between a
worker's few thousand remembered blocks and a new prompt a one-in-a-million
event, and a false match costs no more than one less well placed call.
Names are packed into one ``bytes``, 4 per block.
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiosd.daemon.leasing.tuning import CHARS_PER_TOKEN

#: Bytes per named block (~256 tokens): coarse enough to be cheap (the Python loop per block costs
#: more than hashing its bytes), fine next to what an agent's step adds to its prompt.
BLOCK_BYTES = 1024
#: Blocks named per prompt (64 KiB).
MAX_BLOCKS = 64
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
        return memoryview(self.blocks).cast("I")


def shape_of(messages: Iterable[Any], max_tokens: Any = None) -> Shape:
    """The shape of an LLM call with these (already fitted) messages."""
    text = render(messages).encode()
    limit = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None
    return Shape(prefix_blocks(text), len(text) // CHARS_PER_TOKEN, limit)


def render(messages: Iterable[Any]) -> str:
    """The prompt as one string: roles and contents in order (what every chat template keeps)."""
    parts: list[str] = []
    add = parts.append
    for message in messages:
        if isinstance(message, dict):
            content = message.get("content")
            add(str(message.get("role") or ""))
            add(_ROLE_END)
            add(content if isinstance(content, str) else ("" if content is None else str(content)))
            add(_MESSAGE_END)
    return "".join(parts)


def prefix_blocks(text: bytes) -> bytes:
    """The names of ``text``'s full blocks (CRC-32 of each prefix), packed as native 32-bit integers."""
    names = array("I")
    view = memoryview(text)
    name = 0
    for start in range(0, min(len(text) // BLOCK_BYTES, MAX_BLOCKS) * BLOCK_BYTES, BLOCK_BYTES):
        name = zlib.crc32(view[start : start + BLOCK_BYTES], name)
        names.append(name)
    return names.tobytes()
