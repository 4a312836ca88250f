"""The backend as a worker drives it (coroutines; they run on the :class:`~.runner.Runner`).

:class:`Engine` adds to a :class:`~.backends.base.Backend` what the worker
process needs around it: launching and supervising an SGLang server when the
configuration says so, waiting for the backend to become healthy, the model it
registers with, a capacity bound on concurrent calls and the health/metrics
probe behind every heartbeat.

Health means "can serve". A probe that does not answer within the heartbeat
interval while calls are in flight reports the backend busy, not dead (servers
that run one generation at a time queue probes behind them); death shows as a
refused connection, an error status, or calls failing and timing out. Every
change of health is logged (``backend_health_changed``) and counted in the
heartbeat metrics (``health_changes``), next to ``healthy``, ``busy`` and
``calls_in_flight``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from aiosd.sdk.cluster import Lease, Outcome
from aiosd.sdk.process.logs import get_logger

from .backends import create_backend
from .backends.base import Backend, BackendError, BackendUnavailable, ModelInfo
from .backends.launcher import ServerSupervisor
from .calls import run_lease
from .config import WorkerConfig

log = get_logger(__name__)


@dataclass(frozen=True)
class Probe:
    """What one heartbeat reports about the backend."""

    healthy: bool
    metrics: dict[str, float] = field(default_factory=dict)
    failed: bool = False  # the supervised server gave up restarting: the worker must exit


class Engine:
    """One backend (and its supervised server, if any) with a bound on concurrent calls."""

    def __init__(self, config: WorkerConfig, backend: Backend | None = None) -> None:
        self.config = config
        self.backend = backend or create_backend(config.backend, **config.options)
        self.supervisor = ServerSupervisor.for_sglang(config.launch) if config.launch else None
        self.info = ModelInfo(name="", context_length=0, backend=config.backend)
        # Prefetch already bounds deliveries; this also holds across a reconnect,
        # when calls of the old connection still run beside new deliveries.
        self._slots = asyncio.Semaphore(config.capacity)
        self._running = 0  # calls admitted past the semaphore, i.e. at the backend
        self._admitted = 0  # calls ever admitted: tells whether any ran during a probe
        self._healthy: bool | None = None
        self._health_changes = 0

    async def start(self, timeout: float) -> ModelInfo:
        """Launch the server if configured, start the backend, wait until it is healthy.

        Raises :class:`BackendUnavailable` when it does not become healthy
        within ``timeout`` seconds (a launched server has its own, longer
        start-up limit).
        """
        if self.supervisor is not None:
            await self.supervisor.start()
        await self.backend.start()
        deadline = time.monotonic() + timeout
        while not await self.backend.health():
            if time.monotonic() >= deadline:
                raise BackendUnavailable(f"{self.config.backend} backend not healthy within {timeout:g}s")
            await asyncio.sleep(0.5)
        try:
            self.info = await self.backend.info()
        except BackendError as exc:
            raise BackendUnavailable(f"cannot read the served model: {exc}") from exc
        for warning in await self.backend.check():
            log.warning("backend_setting_warning", backend=self.config.backend, warning=warning)
        log.info(
            "backend_started",
            backend=self.config.backend,
            model=self.info.name,
            context_length=self.info.context_length,
        )
        return self.info

    async def run(self, lease: Lease) -> Outcome:
        """Run one lease when a slot is free; see :func:`~.calls.run_lease`."""
        async with self._slots:
            self._running += 1
            self._admitted += 1
            log.info("call_started", key=lease.key, lease_id=lease.lease_id, attempt=lease.attempt)
            try:
                return await run_lease(self.backend, lease, self.config.worker_id, self.info.name)
            finally:
                self._running -= 1

    async def probe(self, timeout: float) -> Probe:
        """Health and load figures, each bounded by ``timeout`` so heartbeats keep their pace."""
        failed = self.supervisor is not None and self.supervisor.state == "failed"
        busy, admitted = self._running > 0, self._admitted
        healthy, slow = False, False
        started = time.monotonic()
        try:  # a probe reports trouble, it never raises
            healthy = not failed and await asyncio.wait_for(self.backend.health(), timeout)
        except TimeoutError:
            slow = True
            # Calls that ran at any time while the probe waited count, even ones that already ended.
            busy = busy or self._running > 0 or self._admitted != admitted
            healthy = busy and not failed  # queued behind our own calls: busy, not dead
        except Exception as exc:
            log.warning("backend_probe_failed", error=repr(exc))
        probe_ms = round((time.monotonic() - started) * 1000.0, 1)
        self._note_health(healthy, busy=busy, slow=slow, probe_ms=probe_ms)
        metrics: dict[str, float] = {}
        with contextlib.suppress(Exception):
            metrics = dict(await asyncio.wait_for(self.backend.metrics(), timeout))
        metrics.update(
            healthy=float(healthy),
            busy=float(busy),
            calls_in_flight=float(self._running),
            health_changes=float(self._health_changes),
        )
        return Probe(healthy=healthy, metrics=metrics, failed=failed)

    def _note_health(self, healthy: bool, *, busy: bool, slow: bool, probe_ms: float) -> None:
        """Log and count every change of health (the first probe sets the baseline)."""
        before, self._healthy = self._healthy, healthy
        if before is None or before == healthy:
            return
        self._health_changes += 1
        emit = log.info if healthy else log.warning
        emit(
            "backend_health_changed",
            backend=self.config.backend,
            healthy=healthy,
            was=before,
            calls_in_flight=self._running,
            busy=busy,
            probe_timed_out=slow,
            probe_ms=probe_ms,
            changes=self._health_changes,
        )

    async def close(self) -> None:
        """Close the backend, then stop the supervised server (idempotent)."""
        with contextlib.suppress(Exception):
            await self.backend.close()
        if self.supervisor is not None:
            await self.supervisor.close()
