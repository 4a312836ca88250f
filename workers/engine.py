"""The backend as a worker drives it (coroutines; they run on the :class:`~.runner.Runner`).

:class:`Engine` adds to a :class:`~.backends.base.Backend` what the worker
process needs around it: launching and supervising an SGLang server when the
configuration says so, waiting for the backend to become healthy, the model it
registers with, a capacity bound on concurrent calls and the health/metrics
probe behind every heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from aiosd.daemon.logs import get_logger
from aiosd.sdk.cluster import Lease, Outcome

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
        log.info("backend_started", backend=self.config.backend, model=self.info.name,
                 context_length=self.info.context_length)
        return self.info

    async def run(self, lease: Lease) -> Outcome:
        """Run one lease when a slot is free; see :func:`~.calls.run_lease`."""
        async with self._slots:
            return await run_lease(self.backend, lease, self.config.worker_id, self.info.name)

    async def probe(self, timeout: float) -> Probe:
        """Health and load figures, each bounded by ``timeout`` so heartbeats keep their pace."""
        failed = self.supervisor is not None and self.supervisor.state == "failed"
        healthy = False
        metrics: dict[str, float] = {}
        with contextlib.suppress(Exception):  # a probe reports trouble, it never raises
            healthy = not failed and await asyncio.wait_for(self.backend.health(), timeout)
        with contextlib.suppress(Exception):
            metrics = dict(await asyncio.wait_for(self.backend.metrics(), timeout))
        return Probe(healthy=healthy, metrics=metrics, failed=failed)

    async def close(self) -> None:
        """Close the backend, then stop the supervised server (idempotent)."""
        with contextlib.suppress(Exception):
            await self.backend.close()
        if self.supervisor is not None:
            await self.supervisor.close()
