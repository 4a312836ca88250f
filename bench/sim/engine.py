"""The simulated serving engine: SGLang's scheduling loop on a clock scaled to wall time.

One asyncio task plays the GPU. Each turn it runs one of:

- a **prefill batch** (it has priority, as in SGLang without mixed chunks):
  waiting requests in arrival order (FCFS) while fewer than ``max_running``
  requests run, the KV pool has room for the uncached prompt plus the output,
  and the batch has fewer than ``chunk_tokens`` new tokens; a longer prompt is
  chunked over several batches. A request's prompt tokens found in the prefix
  cache cost nothing. The batch takes ``max(decode_base, tokens * per_token +
  attention)`` and gives every completed prompt its first token;
- **decode steps** for all running requests, one token each, taking
  ``decode_base + per_seq * batch + per_kv_token * KV tokens`` per step.

Time is simulated: a turn of ``d`` simulated seconds ends ``d * time_scale``
wall seconds after the previous one. Decode steps are not slept one by one:
the engine sleeps until the next request completes (or ``max_window`` wall
seconds, so streams see progress), and an arrival cuts the sleep short at the
end of the step in flight -- the CPU cost follows events, not steps.

Memory: the pool (:class:`~.cache.KVPool`) holds cached blocks and, per
running request, its uncached prompt plus its whole output (reserved when it
is admitted, so nothing is ever preempted). After prefill a prompt's full
blocks enter the cache (concurrent requests share them at once); when a
request finishes, its output's blocks do too, and all become evictable.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from . import calibration
from .cache import BlockHash, KVPool, block_hashes
from .model import Plan


@dataclass(frozen=True)
class EngineConfig:
    """The simulated GPU and its scheduler limits; defaults from :mod:`.calibration`."""

    time_scale: float = 1.0  # wall seconds per simulated second
    max_running: int = calibration.MAX_RUNNING
    cache_tokens: int = calibration.CACHE_TOKENS
    block_tokens: int = calibration.BLOCK_TOKENS
    chunk_tokens: int = calibration.CHUNK_TOKENS
    context_length: int = calibration.CONTEXT_LENGTH
    decode_base_s: float = calibration.DECODE_BASE_S
    decode_per_seq_s: float = calibration.DECODE_PER_SEQ_S
    decode_per_kv_token_s: float = calibration.DECODE_PER_KV_TOKEN_S
    prefill_per_token_s: float = calibration.PREFILL_PER_TOKEN_S
    prefill_attention_s: float = calibration.PREFILL_ATTENTION_S
    max_window: float = 0.05  # wall seconds between progress updates while decoding

    def __post_init__(self) -> None:
        if self.time_scale <= 0 or self.max_running < 1 or self.chunk_tokens < 1 or self.block_tokens < 1:
            raise ValueError("time_scale, max_running, chunk_tokens and block_tokens must be positive")
        if self.cache_tokens < self.block_tokens:
            raise ValueError("cache_tokens must hold at least one block")

    def decode_step(self, batch: int, kv_tokens: int) -> float:
        """Simulated seconds of one decode step."""
        return self.decode_base_s + self.decode_per_seq_s * batch + self.decode_per_kv_token_s * kv_tokens

    def prefill_time(self, tokens: int, attention_pairs: float) -> float:
        """Simulated seconds of one prefill batch of ``tokens`` new tokens."""
        compute = self.prefill_per_token_s * tokens + self.prefill_attention_s * attention_pairs
        return max(self.decode_base_s, compute)


@dataclass(eq=False)
class SimRequest:
    """One generation inside the engine; times are simulated seconds."""

    rid: str
    ids: list[int]
    plan: Plan
    arrival: float
    cached: int = 0  # prompt tokens found in the prefix cache
    computed: int = 0  # prompt tokens with KV (cached + prefilled)
    produced: int = 0  # output tokens so far
    admitted_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    finish: dict[str, Any] | None = None  # set when done (the plan's reason, or an abort)
    names: list[BlockHash] = field(default_factory=list)  # prompt blocks
    pinned: list[BlockHash] = field(default_factory=list)  # blocks this request holds
    reserved: int = 0  # private KV tokens
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ttft(self) -> float | None:
        """Simulated time to first token."""
        return None if self.first_token_at is None else self.first_token_at - self.arrival

    def output_ids(self) -> list[int]:
        """The ids produced so far."""
        return self.plan.output_ids()[: self.produced]


@dataclass
class Counters:
    """Totals since start (or the last reset)."""

    submitted: int = 0
    finished: int = 0
    aborted: int = 0
    prompt_tokens: int = 0  # of admitted requests
    cached_tokens: int = 0
    generated_tokens: int = 0
    prefill_tokens: int = 0  # prompt tokens actually computed
    busy: float = 0.0  # simulated seconds the GPU worked
    ttft_sum: float = 0.0  # of finished requests
    queue_sum: float = 0.0  # simulated seconds from arrival to admission, finished requests


class Engine:
    """The simulated GPU; ``start`` it inside a running event loop."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.pool = KVPool(self.config.cache_tokens, self.config.block_tokens)
        self.counters = Counters()
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self._chunked: SimRequest | None = None  # admitted, prompt partly computed
        self._requests: dict[str, SimRequest] = {}
        self._aborts: set[str] = set()
        self._wake = asyncio.Event()
        self._clock = 0.0
        self._t0 = 0.0
        self._task: asyncio.Task[None] | None = None

    # -- life -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the GPU loop; simulated time 0 is now."""
        if self._task is None:
            self._t0 = asyncio.get_running_loop().time()
            self._task = asyncio.create_task(self._run(), name="bench.sim engine")

    async def stop(self) -> None:
        """Stop the loop; requests still in the engine end as aborted."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for req in list(self._requests.values()):
            self._end(req, {"type": "abort", "message": "server shutting down"})

    # -- requests -------------------------------------------------------------------

    def submit(self, ids: list[int], plan: Plan, rid: str | None = None) -> SimRequest:
        """Queue a generation; ``ValueError`` when it can never run."""
        if not ids:
            raise ValueError("the input is empty")
        total = len(ids) + plan.tokens
        if total > self.config.context_length:
            raise ValueError(
                f"input ({len(ids)} tokens) plus output ({plan.tokens}) exceeds the context length "
                f"{self.config.context_length}"
            )
        if total > self.config.cache_tokens:
            raise ValueError(f"{total} tokens do not fit the KV pool of {self.config.cache_tokens}")
        if self._task is None:
            raise RuntimeError("the engine is not started")
        req = SimRequest(rid=rid or uuid.uuid4().hex, ids=ids, plan=plan, arrival=self.sim_now())
        self._requests[req.rid] = req
        self.waiting.append(req)
        self.counters.submitted += 1
        self._wake.set()
        return req

    def abort(self, rid: str) -> bool:
        """Abort a request at the next step boundary; False when it is unknown or done."""
        if rid not in self._requests:
            return False
        self._aborts.add(rid)
        self._wake.set()
        return True

    def sim_now(self) -> float:
        """Simulated seconds since start, from the wall clock."""
        return (asyncio.get_running_loop().time() - self._t0) / self.config.time_scale

    def flush_cache(self) -> int:
        """Drop every cached block no request uses; returns how many."""
        return self.pool.cache.clear()

    def reset_counters(self) -> None:
        """Zero the totals (the cache is kept; see :meth:`flush_cache`)."""
        self.counters = Counters()

    def stats(self) -> dict[str, Any]:
        """Figures for ``/sim/stats`` (times in simulated seconds)."""
        c = self.counters
        return {
            "sim_time": self._clock,
            "busy_time": c.busy,
            "requests_submitted": c.submitted,
            "requests_finished": c.finished,
            "requests_aborted": c.aborted,
            "running": len(self.running) + (1 if self._chunked else 0),
            "queued": len(self.waiting),
            "prompt_tokens": c.prompt_tokens,
            "cached_tokens": c.cached_tokens,
            "prefill_tokens": c.prefill_tokens,
            "generated_tokens": c.generated_tokens,
            "cache_hit_rate": c.cached_tokens / c.prompt_tokens if c.prompt_tokens else 0.0,
            "mean_ttft": c.ttft_sum / c.finished if c.finished else 0.0,
            "mean_queue_time": c.queue_sum / c.finished if c.finished else 0.0,
            "token_usage": self.pool.usage,
            "cache_capacity_tokens": self.pool.capacity,
            "cache_used_tokens": self.pool.cache.used,
            "cache_evictable_tokens": self.pool.cache.evictable,
            "reserved_tokens": self.pool.reserved,
            "evicted_blocks": self.pool.cache.evicted_blocks,
        }

    # -- the loop -------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            self._reap_aborts()
            if not (self.waiting or self.running or self._chunked):
                await self._wake.wait()
                # An idle GPU starts on the first arrival at once: the event loop's
                # wake-up latency is no simulated time.
                arrived = self.waiting[0].arrival if self.waiting else self.sim_now()
                self._clock = max(self._clock, arrived)
                continue
            batch = self._form_prefill()
            if batch:
                await self._prefill(batch)
            elif self.running:
                await self._decode()
            else:  # pragma: no cover - a lone waiting request always fits an idle pool
                await self._wake.wait()

    def _form_prefill(self) -> list[tuple[SimRequest, int]]:
        budget = self.config.chunk_tokens
        batch: list[tuple[SimRequest, int]] = []
        if self._chunked is not None:
            req = self._chunked
            todo = len(req.ids) - req.computed
            take = min(todo, budget)
            batch.append((req, take))
            if take < todo:
                return batch
            budget -= take
            self._chunked = None
        while self.waiting and budget > 0 and len(self.running) + len(batch) < self.config.max_running:
            req = self.waiting[0]
            if not self._admit(req):
                break
            self.waiting.popleft()
            todo = len(req.ids) - req.computed
            take = min(todo, budget)
            budget -= take
            batch.append((req, take))
            if take < todo:
                self._chunked = req
                break
        return batch

    def _admit(self, req: SimRequest) -> bool:
        size = self.config.block_tokens
        cache = self.pool.cache
        names = block_hashes(req.ids, size)
        # At least one prompt token is always computed (its logits give the first token).
        hit = min(cache.match(names), (len(req.ids) - 1) // size)
        need = len(req.ids) - hit * size + req.plan.tokens
        if need > self.pool.free + cache.evictable - cache.unpinned(names[:hit]) * size:
            return False
        cache.pin(names[:hit])
        self.pool.make_room(need)
        self.pool.reserved += need
        req.names, req.pinned, req.reserved = names, names[:hit], need
        req.cached = req.computed = hit * size
        req.admitted_at = self._clock
        self.counters.prompt_tokens += len(req.ids)
        self.counters.cached_tokens += req.cached
        return True

    async def _prefill(self, batch: list[tuple[SimRequest, int]]) -> None:
        tokens = sum(take for _, take in batch)
        pairs = sum(take * req.computed + take * take / 2 for req, take in batch)
        duration = self.config.prefill_time(tokens, pairs)
        await self._sleep_until(self._clock + duration, interruptible=False)
        self._clock += duration
        self.counters.busy += duration
        self.counters.prefill_tokens += tokens
        for req, take in batch:
            req.computed += take
            if req.computed < len(req.ids):
                continue
            self._cache_prompt(req)
            req.produced = 1
            req.first_token_at = self._clock
            req.changed.set()
            self.counters.generated_tokens += 1
            if req.produced >= req.plan.tokens:
                self._complete(req)
            else:
                self.running.append(req)

    def _cache_prompt(self, req: SimRequest) -> None:
        """The prompt's full blocks join the cache, held by this request; its private KV shrinks."""
        fresh = req.names[len(req.pinned) :]
        self.pool.cache.insert(fresh)
        self.pool.cache.pin(fresh)
        req.pinned = req.names
        released = len(fresh) * self.config.block_tokens
        req.reserved -= released
        self.pool.reserved -= released

    async def _decode(self) -> None:
        batch = len(self.running)
        kv_tokens = sum(len(r.ids) + r.produced for r in self.running)
        step = self.config.decode_step(batch, kv_tokens)
        steps = min(r.plan.tokens - r.produced for r in self.running)
        steps = max(1, min(steps, int(self.config.max_window / (step * self.config.time_scale))))
        start = self._clock
        if await self._sleep_until(start + steps * step, interruptible=True):
            # Woken (an arrival or abort): the step in flight completes first.
            done = math.ceil((self.sim_now() - start) / step - 1e-9)
            steps = min(steps, max(1, done))
            await self._sleep_until(start + steps * step, interruptible=False)
        self._clock = start + steps * step
        self.counters.busy += steps * step
        self.counters.generated_tokens += steps * batch
        finished = []
        for req in self.running:
            req.produced += steps
            req.changed.set()
            if req.produced >= req.plan.tokens:
                finished.append(req)
        for req in finished:
            self.running.remove(req)
            self._complete(req)

    async def _sleep_until(self, sim_time: float, *, interruptible: bool) -> bool:
        """Sleep until the wall time of ``sim_time``; True when an arrival or abort woke us first."""
        delay = self._t0 + sim_time * self.config.time_scale - asyncio.get_running_loop().time()
        if delay <= 0:
            return False
        if not interruptible:
            await asyncio.sleep(delay)
            return False
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except TimeoutError:
            return False
        return True

    # -- endings --------------------------------------------------------------------

    def _complete(self, req: SimRequest) -> None:
        """A finished generation: its output's full blocks join the cache, everything becomes evictable."""
        size = self.config.block_tokens
        cache = self.pool.cache
        sequence = req.ids + req.output_ids()
        parent = req.pinned[-1] if req.pinned else 0
        tail = block_hashes(sequence, size, start=len(req.pinned), parent=parent)
        cache.insert(tail)
        cache.pin(tail)
        self._release(req, req.pinned + tail)
        self.counters.finished += 1
        if req.first_token_at is not None and req.admitted_at is not None:
            self.counters.ttft_sum += req.first_token_at - req.arrival
            self.counters.queue_sum += req.admitted_at - req.arrival
        self._end(req, req.plan.finish)

    def _release(self, req: SimRequest, names: list[BlockHash]) -> None:
        self.pool.cache.unpin(names)
        req.pinned = []
        self.pool.reserved -= req.reserved
        req.reserved = 0
        self.pool.trim()

    def _end(self, req: SimRequest, finish: dict[str, Any]) -> None:
        if req.finish is not None:
            return
        req.finish = finish
        req.finished_at = self._clock
        self._requests.pop(req.rid, None)
        req.changed.set()
        req.done.set()

    def _reap_aborts(self) -> None:
        for rid in self._aborts:
            req = self._requests.get(rid)
            if req is None:
                continue
            if req in self.waiting:
                self.waiting.remove(req)
            elif req is self._chunked or req in self.running:
                if req is self._chunked:
                    self._chunked = None
                else:
                    self.running.remove(req)
                self._release(req, req.pinned)
            self.counters.aborted += 1
            self._end(req, {"type": "abort", "message": f"Abort request {rid}"})
        self._aborts.clear()
