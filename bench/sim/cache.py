"""The prefix cache: chained hashes of full token blocks, LRU eviction, pinning.

Like vLLM's automatic prefix caching: a sequence's KV is kept per block of
``block_tokens`` tokens, and block ``i`` is named by the hash of (block
``i - 1``'s name, the block's tokens), so a name stands for the whole prefix up
to that block and matching a prompt walks its blocks from the start until one
is missing. Blocks that running requests use are pinned; the others form an
LRU list and are evicted oldest first when the KV pool needs room. A finished
request releases its chain deepest block first, so a prefix outlives its
extensions (leaves are evicted before the prefixes they hang from).

All sizes are in tokens. ``used`` counts cached blocks (pinned or not); the
engine adds the private KV of running requests (:class:`KVPool`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

BlockHash = int


def block_hashes(ids: Sequence[int], block_tokens: int, start: int = 0, parent: BlockHash = 0) -> list[BlockHash]:
    """Names of the full blocks of ``ids`` from block ``start`` on (``parent``: the name of block ``start - 1``)."""
    names: list[BlockHash] = []
    for i in range(start, len(ids) // block_tokens):
        parent = hash((parent, *ids[i * block_tokens : (i + 1) * block_tokens]))
        names.append(parent)
    return names


class PrefixCache:
    """Cached blocks by name, with reference counts and an LRU list of the unreferenced ones."""

    def __init__(self, block_tokens: int) -> None:
        self.block_tokens = block_tokens
        self._refs: dict[BlockHash, int] = {}
        self._lru: OrderedDict[BlockHash, None] = OrderedDict()
        self.evicted_blocks = 0

    @property
    def used(self) -> int:
        """Tokens held by cached blocks."""
        return len(self._refs) * self.block_tokens

    @property
    def evictable(self) -> int:
        """Tokens in blocks no running request uses."""
        return len(self._lru) * self.block_tokens

    def __contains__(self, name: BlockHash) -> bool:
        return name in self._refs

    def match(self, names: Sequence[BlockHash]) -> int:
        """How many leading blocks of ``names`` are cached."""
        for i, name in enumerate(names):
            if name not in self._refs:
                return i
        return len(names)

    def pin(self, names: Sequence[BlockHash]) -> None:
        """Mark cached blocks as in use (they cannot be evicted until unpinned)."""
        for name in names:
            refs = self._refs[name]
            if refs == 0:
                self._lru.pop(name, None)
            self._refs[name] = refs + 1

    def insert(self, names: Sequence[BlockHash]) -> int:
        """Add the blocks not cached yet (unpinned, most recently used); returns how many were new."""
        new = 0
        for name in names:
            if name not in self._refs:
                self._refs[name] = 0
                self._lru[name] = None
                new += 1
        return new

    def unpinned(self, names: Sequence[BlockHash]) -> int:
        """How many of these cached blocks no request uses."""
        return sum(1 for name in names if self._refs.get(name) == 0)

    def unpin(self, names: Sequence[BlockHash]) -> None:
        """Release blocks; unreferenced ones become the most recently used, deepest first."""
        for name in reversed(names):
            refs = self._refs.get(name)
            if refs is None:
                continue
            if refs <= 1:
                self._refs[name] = 0
                self._lru[name] = None
                self._lru.move_to_end(name)
            else:
                self._refs[name] = refs - 1

    def evict(self, tokens: int) -> int:
        """Evict least recently used unpinned blocks until ``tokens`` are freed; returns tokens freed."""
        freed = 0
        while freed < tokens and self._lru:
            name, _ = self._lru.popitem(last=False)
            del self._refs[name]
            self.evicted_blocks += 1
            freed += self.block_tokens
        return freed

    def clear(self) -> int:
        """Drop every unpinned block (SGLang's ``/flush_cache``); returns blocks dropped."""
        dropped = len(self._lru)
        for name in self._lru:
            del self._refs[name]
        self._lru.clear()
        return dropped


class KVPool:
    """The KV pool of one GPU: cached blocks plus the private KV of running requests."""

    def __init__(self, capacity: int, block_tokens: int) -> None:
        self.capacity = capacity
        self.cache = PrefixCache(block_tokens)
        self.reserved = 0

    @property
    def free(self) -> int:
        """Tokens neither cached nor reserved."""
        return self.capacity - self.cache.used - self.reserved

    @property
    def usage(self) -> float:
        """Fraction of the pool in use, evictable blocks included (SGLang's ``token_usage``)."""
        return (self.cache.used + self.reserved) / self.capacity if self.capacity else 0.0

    def make_room(self, tokens: int) -> bool:
        """Evict until ``tokens`` are free; False (and nothing evicted) when even that cannot do it."""
        if tokens > self.free + self.cache.evictable:
            return False
        if tokens > self.free:
            self.cache.evict(tokens - self.free)
        return True

    def trim(self) -> None:
        """Evict what exceeds the capacity (after blocks were added)."""
        if self.free < 0:
            self.cache.evict(-self.free)
