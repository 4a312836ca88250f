"""The ``aiosd worker`` process: wiring and lifecycle.

Threads: the main thread owns the AMQP connection (:class:`~.amqp.WorkerBroker`)
and runs the loop -- pump, publish outcomes, heartbeat, watchdog; a
:class:`~.runner.Runner` thread runs the asyncio backend (:class:`~.engine.Engine`).

Start: load the backend, connect (retrying up to ``connect_timeout``), send
the first heartbeat (registration), then ``READY=1`` and consume leases.

Leases: every delivery is run as it comes, even when its ``expires_at`` has
already passed. Clocks of different hosts disagree, and only the scheduler
can tell whether the lease is still current; it drops a stale result. Each
lease yields exactly one outcome; the delivery is acked only after the
broker confirmed that outcome. A revoke (the scheduler takes leases back to
keep this worker clear for interactive calls) is acked at once; the calls it
names are cancelled and reported ``released``, to run again elsewhere.

Stop (SIGTERM/SIGINT): cancel the consumer, hand back the leases still
queued, keep heartbeating (``draining``) while in-flight calls finish, cancel
and release what is left when the deadline nears, publish ``Goodbye`` and exit.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from functools import partial
from typing import Protocol

from aiosd.sdk.cluster import Goodbye, Heartbeat, Lease, Outcome, Revoke, WorkerKind, WorkerState, decode_order
from aiosd.sdk.errors import ProtocolError, ServiceUnavailable
from aiosd.sdk.process import metrics
from aiosd.sdk.process.lifecycle import Lifecycle
from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.process.settings import Settings
from aiosd.sdk.protocol import utcnow

from .amqp import AMQP_ERRORS, PUBLISH_ERRORS, WorkerBroker
from .backends.base import BackendError, ModelInfo
from .calls import released_outcome
from .config import WorkerConfig, worker_config
from .engine import Engine, Probe
from .ledger import Held, Ledger
from .runner import Runner

log = get_logger(__name__)
PUMP_SECONDS = 0.2
#: Part of shutdown_timeout kept for releasing unfinished calls and saying goodbye.
RELEASE_RESERVE = 5.0
#: A launched SGLang server gets SIGTERM, then SIGKILL after its grace period.
BACKEND_CLOSE_TIMEOUT = 30.0


class Driver(Protocol):
    """What the process drives on its runner thread: an LLM :class:`~.engine.Engine` or the tool runner."""

    info: ModelInfo

    async def start(self, timeout: float) -> ModelInfo: ...

    async def run(self, lease: Lease) -> Outcome: ...

    async def probe(self, timeout: float) -> Probe: ...

    async def close(self) -> None: ...


class Worker:
    """One worker process; :meth:`run` returns when it has stopped cleanly.

    The same process machinery serves LLM workers (``kind="llm"``, an
    :class:`~.engine.Engine`) and tool runners (``kind="tools"``, see
    :mod:`.toolrunner`); ``interrupted`` makes the outcome of a call cut off by
    the stop deadline (default: ``released``, so it runs again elsewhere).
    """

    def __init__(
        self,
        settings: Settings,
        lifecycle: Lifecycle,
        config: WorkerConfig | None = None,
        engine: Driver | None = None,
        kind: WorkerKind = "llm",
        interrupted: Callable[[Lease, str, str], Outcome] = released_outcome,
    ) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.config = config or worker_config(settings)
        self.kind: WorkerKind = kind
        self.runner = Runner()
        self.engine: Driver = engine or Engine(self.config)
        self.ledger = Ledger(self.config.worker_id, interrupted)
        self._broker: WorkerBroker | None = None
        self._draining = False
        self._probe: concurrent.futures.Future[Probe] | None = None
        self._next_beat = 0.0
        self._failure: ServiceUnavailable | None = None

    def run(self) -> None:
        """Start, serve until asked to stop, drain. Raises ServiceUnavailable if it cannot serve."""
        log.info(
            "worker_starting",
            worker_id=self.config.worker_id,
            backend=self.config.backend,
            capacity=self.config.capacity,
        )
        self.runner.start()
        try:
            if self._start():
                self._serve()
                self._drain()
        finally:
            self._close()
        if self._failure is not None:
            raise self._failure

    # -- start ---------------------------------------------------------------------

    def _start(self) -> bool:
        """Backend, connection, registration, READY; False if a stop request came first."""
        try:
            self._start_engine()
            broker = self._broker = self._connect(self.settings.connect_timeout)
            self._heartbeat(broker, self.runner.call(self.engine.probe(self.settings.heartbeat_interval)))
            broker.start_consuming()
        except ServiceUnavailable:
            if self.lifecycle.stop_requested.is_set():
                log.info("worker_stopped_while_starting")
                return False
            raise
        except AMQP_ERRORS as exc:
            raise ServiceUnavailable(f"RabbitMQ failed during registration: {exc!r}") from exc
        self._next_beat = time.monotonic() + self.settings.heartbeat_interval
        info = self.engine.info
        self._metrics_on()
        self.lifecycle.ready(f"worker {self.config.worker_id}: {info.name}, capacity {self.config.capacity}")
        log.info("worker_ready", worker_id=self.config.worker_id, model=info.name, capacity=self.config.capacity)
        return True

    def _metrics_on(self) -> None:
        kind = "worker" if self.kind == "llm" else "tools"
        metrics.serve(kind, self.settings.metrics_host, self.settings.metrics_port)
        metrics.WORKER_CAPACITY.labels(self.kind).set(self.config.capacity)
        metrics.gauge_from(metrics.WORKER_IN_FLIGHT.labels(self.kind), lambda: len(self.ledger))

    def _start_engine(self) -> None:
        # Wait in the main thread so the watchdog is fed and SIGTERM is heard
        # while a model loads (an SGLang server takes minutes).
        future = self.runner.submit(self.engine.start(self.settings.connect_timeout))
        while not future.done():
            if self.lifecycle.stop_requested.wait(0.5):
                future.cancel()
                raise ServiceUnavailable("stopped while the backend was starting")
            self.lifecycle.tick()
        try:
            future.result()
        except BackendError as exc:
            raise ServiceUnavailable(f"backend {self.config.backend} cannot start: {exc}") from exc

    def _connect(self, timeout: float) -> WorkerBroker:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._open()
            except ServiceUnavailable as exc:
                if time.monotonic() >= deadline or self.lifecycle.stop_requested.is_set():
                    raise
                log.warning("broker_unavailable_retrying", error=str(exc))
                self.lifecycle.stop_requested.wait(1.0)

    # -- serve ---------------------------------------------------------------------

    def _serve(self) -> None:
        while not self.lifecycle.stop_requested.is_set():
            self._tick()

    def _tick(self) -> None:
        """One round of the main loop: (re)connect, I/O, outcomes, heartbeat, watchdog."""
        try:
            broker = self._broker or self._reconnect()
            broker.pump(PUMP_SECONDS)
            self._flush(broker)
            self._maybe_heartbeat(broker)
        except AMQP_ERRORS as exc:
            log.error("broker_connection_lost", error=repr(exc), held=len(self.ledger))
            self._disconnect()
        except ServiceUnavailable as exc:
            log.warning("broker_reconnect_failed", error=str(exc))
            self.lifecycle.stop_requested.wait(1.0)
        self.lifecycle.tick()

    def _on_lease(self, tag: int, body: bytes) -> None:
        broker = self._broker
        assert broker is not None
        try:
            lease = decode_order(body)
        except ProtocolError as exc:
            # Without a valid lease there is nobody to report to; it expires at the scheduler.
            log.error("lease_undecodable", error=exc.message)
            broker.drop(tag)
            return
        if isinstance(lease, Revoke):
            self._revoke(lease, tag, broker)
            return
        if lease.lease_id in self.ledger.held:
            log.warning("lease_duplicate_dropped", lease_id=lease.lease_id)
            broker.drop(tag)
            return
        held = Held(lease, tag, broker)
        self.ledger.hold(held)
        if self._draining:
            self.ledger.release(lease)  # arrived after the stop: hand it straight back
            return
        if lease.expires_at <= utcnow():
            log.warning("lease_expired_on_arrival", lease_id=lease.lease_id, key=lease.key)
        held.future = self.runner.submit(self.engine.run(lease))
        held.future.add_done_callback(partial(self._finished, lease))
        log.info(
            "lease_started",
            lease_id=lease.lease_id,
            key=lease.key,
            attempt=lease.attempt,
            slice_tokens=lease.slice_tokens,
            resumed=lease.resume is not None,
        )

    def _revoke(self, revoke: Revoke, tag: int, broker: WorkerBroker) -> None:
        """The scheduler took leases back: stop their calls (each reports ``released``)."""
        broker.ack(tag)
        stopped = self.ledger.revoke(revoke.lease_ids, revoke.reason)
        log.info("leases_revoked", leases=len(revoke.lease_ids), stopped=stopped, reason=revoke.reason)

    def _finished(self, lease: Lease, future: concurrent.futures.Future[Outcome]) -> None:
        # Runner thread (main thread for a cancel): queue the outcome, wake the main loop.
        self.ledger.finish(lease, future)
        broker = self._broker
        if broker is not None:
            broker.later(_nothing)

    def _flush(self, broker: WorkerBroker) -> None:
        """Publish finished outcomes in order, committed together; ack each lease after the commit.

        Until none is left: a call that ends while a batch is committed has its wake-up consumed by the
        commit's own I/O, and would otherwise wait for the next pump (up to ``PUMP_SECONDS``).
        """
        self.ledger.collect()
        while self.ledger.outbox:
            self._publish(broker)
            self.ledger.collect()

    def _publish(self, broker: WorkerBroker) -> None:
        """Publish the outbox as one committed batch, then ack and forget its leases."""
        batch = list(self.ledger.outbox)
        refused = broker.publish_outcomes(batch)
        for outcome in batch:
            self.ledger.outbox.popleft()
            if outcome.lease_id in refused:
                # Not safe in the events queue: the lease expires at the scheduler instead.
                log.error("outcome_refused", lease_id=outcome.lease_id, error="unroutable: no events queue")
            held = self.ledger.settle(outcome.lease_id)
            if held is not None and held.connection is broker:
                broker.ack(held.tag)
            _count(self.kind, outcome)
            log.info(
                "lease_settled",
                lease_id=outcome.lease_id,
                key=outcome.key,
                status=outcome.status,
                error_code=outcome.error_code,
                run_ms=outcome.run_ms,
            )

    # -- heartbeat -------------------------------------------------------------------

    def _maybe_heartbeat(self, broker: WorkerBroker) -> None:
        now = time.monotonic()
        if self._probe is None and now >= self._next_beat:
            self._probe = self.runner.submit(self.engine.probe(self.settings.heartbeat_interval))
            self._next_beat = now + self.settings.heartbeat_interval
        if self._probe is not None and self._probe.done():
            probe, self._probe = self._probe, None
            self._heartbeat(broker, probe.result())

    def _heartbeat(self, broker: WorkerBroker, probe: Probe) -> None:
        if probe.failed and self._failure is None:
            self._failure = ServiceUnavailable("the supervised SGLang server failed and will not restart")
            log.error("backend_failed")
            self.lifecycle.request_stop()
        info = self.engine.info
        state = WorkerState(
            worker_id=self.config.worker_id,
            kind=self.kind,
            host=self.config.host,
            backend=self.config.backend,
            model=info.name,
            context_length=info.context_length,
            capacity=self.config.capacity,
            leases=self.ledger.lease_ids(),
            healthy=probe.healthy,
            draining=self._draining,
            metrics=probe.metrics,
        )
        broker.publish(Heartbeat(worker=state))
        metrics.WORKER_HEALTHY.labels(self.kind).set(1 if probe.healthy else 0)

    # -- connection ----------------------------------------------------------------------

    def _open(self) -> WorkerBroker:
        return WorkerBroker(self.settings.amqp_url, self.config.worker_id, self.config.capacity, self._on_lease)

    def _disconnect(self) -> None:
        # The lease queue goes with the connection, so no lease is delivered twice;
        # running calls go on and their outcomes go out on the next connection.
        old, self._broker = self._broker, None
        if old is not None:
            old.close()

    def _reconnect(self) -> WorkerBroker:
        broker = self._broker = self._open()
        if not self._draining:
            broker.start_consuming()
        self._next_beat = 0.0  # tell the scheduler at once which leases survived
        log.info("broker_reconnected", held=len(self.ledger))
        return broker

    # -- stop ----------------------------------------------------------------------------

    def _drain(self) -> None:
        """Finish or hand back everything held, then say goodbye; within shutdown_timeout."""
        self.lifecycle.stopping()
        self._draining = True
        timeout = self.settings.shutdown_timeout
        started = time.monotonic()
        finish_by = started + max(timeout - RELEASE_RESERVE, timeout / 2)
        close_by = started + timeout
        log.info("worker_draining", held=len(self.ledger), shutdown_timeout=timeout)
        self._stop_taking()
        self._next_beat = 0.0  # a draining heartbeat now: the scheduler stops sending leases
        self._until_settled(finish_by)
        if self.ledger.held:
            log.warning("worker_releasing_unfinished", cancelled=self.ledger.cancel_all())
        self._stop_taking()  # leases sent before the scheduler saw us draining
        self._until_settled(close_by)
        self._goodbye()

    def _stop_taking(self) -> None:
        """Cancel the consumer and release the leases still waiting in the queue."""
        broker = self._broker
        if broker is None:
            return
        try:
            broker.stop_consuming()
            while (delivery := broker.get()) is not None:
                self._on_lease(*delivery)  # draining: released at once
        except AMQP_ERRORS as exc:
            log.warning("stop_taking_failed", error=repr(exc))
            self._disconnect()

    def _until_settled(self, deadline: float) -> None:
        while (self.ledger.held or self.ledger.outbox) and time.monotonic() < deadline:
            self._tick()

    def _goodbye(self) -> None:
        unsettled = len(self.ledger)
        try:
            broker = self._broker or self._reconnect()
            self._flush(broker)
            broker.publish(Goodbye(worker_id=self.config.worker_id))
        except (*AMQP_ERRORS, *PUBLISH_ERRORS, ServiceUnavailable) as exc:
            log.error("goodbye_failed", error=repr(exc))
            return
        log.info("worker_goodbye", unsettled=unsettled)

    def _close(self) -> None:
        self._disconnect()
        try:
            self.runner.call(self.engine.close(), timeout=BACKEND_CLOSE_TIMEOUT)
        except Exception as exc:  # closing is best effort; the process exits anyway
            log.warning("backend_close_failed", error=repr(exc))
        self.runner.stop()
        log.info("worker_stopped", worker_id=self.config.worker_id)


def _nothing() -> None:
    """Queued on the connection only to wake the main loop's pump."""


def _count(kind: str, outcome: Outcome) -> None:
    """The outcome in the worker's metrics (calls by status, tokens by model)."""
    metrics.WORKER_CALLS.labels(kind, outcome.status).inc()
    if kind == "llm":
        usage = outcome.usage
        for kind_of_token, n in (("prompt", usage.prompt_tokens), ("completion", usage.completion_tokens)):
            if n:
                metrics.WORKER_TOKENS.labels(outcome.model or "unknown", kind_of_token).inc(n)
