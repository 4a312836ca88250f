"""The knobs of the program-aware policies, of cache-aware routing and its interactive lane, and the service measure.

*Service* is what a call cost a GPU, in generated-token units: every generated
token counts 1 and every prompt token the worker had to compute (not found in
its prefix cache) counts ``prefill_weight`` — a prefill token costs a GPU far
less than a decode step does (SGLang on an H100 prefills ~25k tokens/s against
a few hundred decode steps/s per request). :mod:`.attained` sums it per program
(``las``), :mod:`.fairshare` per agent (``fair``), and
:mod:`.cacherouting` balances workers by the service still outstanding on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiosd.sdk.process.settings import Settings
    from aiosd.sdk.protocol import Usage

#: Prompt characters per token: the usual ~4 for English text under BPE tokenizers.
CHARS_PER_TOKEN = 4
#: Output tokens assumed for a call that sets no ``max_tokens`` (SGLang's default is 128).
DEFAULT_OUTPUT_TOKENS = 256
#: Longer ``max_tokens`` are mostly headroom, rarely generated: estimates stop here.
MAX_OUTPUT_ESTIMATE = 1024


@dataclass(frozen=True)
class Tuning:
    """Scheduling and routing parameters (Settings fields of the same names describe them)."""

    prefill_weight: float = 0.1
    aging_rate: float = 1000.0
    starvation_bound: float = 60.0
    remembered_programs: int = 100_000
    route_balance_tokens: float = 4096.0
    route_cache_tokens: int = 262_144
    interactive_priority: int = 9
    interactive_workers: int = 1
    interactive_window: float = 10.0
    interactive_preempt: bool = True
    interactive_standby_tokens: int = 1024

    @classmethod
    def of(cls, settings: Settings) -> Tuning:
        """The values a scheduler was configured with."""
        return cls(
            prefill_weight=settings.service_prefill_weight,
            aging_rate=settings.aging_rate,
            starvation_bound=settings.starvation_bound,
            route_balance_tokens=settings.route_balance_tokens,
            route_cache_tokens=settings.route_cache_tokens,
            interactive_priority=settings.interactive_priority,
            interactive_workers=settings.interactive_workers,
            interactive_window=settings.interactive_window,
            interactive_preempt=settings.interactive_preempt,
            interactive_standby_tokens=settings.interactive_standby_tokens,
        )

    def service(self, usage: Usage) -> float:
        """The service one call (or slice) received, from the usage its worker reported."""
        computed = max(usage.prompt_tokens - usage.cached_tokens, 0)
        return usage.completion_tokens + self.prefill_weight * computed

    def service_of(self, totals: dict[str, Any] | None) -> float:
        """The same from a book entry's accumulated usage (a plain dict, ``None`` before any slice)."""
        if not totals:
            return 0.0
        computed = max(int(totals.get("prompt_tokens") or 0) - int(totals.get("cached_tokens") or 0), 0)
        return int(totals.get("completion_tokens") or 0) + self.prefill_weight * computed

    def estimate(self, prompt_tokens: float, max_tokens: int | None) -> float:
        """The service a call not run yet will probably need (no prompt token assumed cached)."""
        return expected_output(max_tokens) + self.prefill_weight * prompt_tokens

    def aged(self, queued_at: float, debt: float) -> float:
        """A queued call's rank: its queue time pushed back by its debt, by at most the starvation bound.

        ``debt`` is service (weighted tokens) its program or agent got ahead of
        others; ``aging_rate`` tokens of it count as one second of waiting.
        Because the push-back is capped, a call queued ``starvation_bound``
        seconds or more after another never ranks before it.
        """
        return queued_at + min(max(debt, 0.0) / self.aging_rate, self.starvation_bound)


def expected_output(max_tokens: int | None) -> int:
    """Output tokens to expect from a call with this ``max_tokens``."""
    return min(max_tokens or DEFAULT_OUTPUT_TOKENS, MAX_OUTPUT_ESTIMATE)
