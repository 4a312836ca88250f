"""The simulator's tokenizer: every 4 bytes of UTF-8 are one token.

A token id is the little-endian ``uint32`` of a 4-byte chunk (the last chunk
padded with NUL bytes), so encoding is cheap, decoding is exact (NUL bytes are
dropped; real text has none) and one token is ~4 characters of English, about
what Llama 3's tokenizer gives. Chunks are aligned to the start of the text, so
two texts with a common prefix share their first ``len(prefix) // 4`` tokens:
prefix caching behaves as with a real tokenizer.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence

_WORD = "I"
if array(_WORD).itemsize != 4:  # pragma: no cover - every platform CPython supports today
    _WORD = "L"
if array(_WORD).itemsize != 4:  # pragma: no cover
    raise ImportError("no 4-byte unsigned array type on this platform")

MAX_ID = 2**32 - 1


def encode(text: str) -> list[int]:
    """Token ids of ``text``."""
    data = text.encode("utf-8")
    data += b"\0" * (-len(data) % 4)
    ids = array(_WORD)
    ids.frombytes(data)
    if sys.byteorder == "big":  # pragma: no cover
        ids.byteswap()
    return ids.tolist()


def decode(ids: Sequence[int]) -> str:
    """The text of ``ids``; raises ``ValueError`` for an id that is no ``uint32``."""
    try:
        words = array(_WORD, ids)
    except OverflowError as exc:
        raise ValueError(f"token ids must be between 0 and {MAX_ID}") from exc
    if sys.byteorder == "big":  # pragma: no cover
        words.byteswap()
    return words.tobytes().replace(b"\0", b"").decode("utf-8", "replace")


def word_id(word: str) -> int:
    """The id of a text of exactly 4 bytes."""
    data = word.encode("utf-8")
    if len(data) != 4:
        raise ValueError(f"{word!r} is not 4 bytes")
    return int.from_bytes(data, "little")
