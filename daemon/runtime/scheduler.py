"""The scheduler process: the main loop that owns the AMQP connection.

:func:`~.wiring.build_scheduler` builds the object graph; this class runs it.
The main thread owns the connection and runs the loop; the syscall threads
serve syscalls. SIGTERM stops consumption, lets in-flight work finish within
``shutdown_timeout`` and exits 0; prefetched messages that never started go
back to RabbitMQ when the connection closes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pika.exceptions

from aiosd.daemon.pipeline.flow import RETRY_PAUSE, TRANSIENT
from aiosd.daemon.runtime.wiring import SchedulerGraph, build_scheduler
from aiosd.daemon.transport.batcher import Batcher, Serving
from aiosd.daemon.transport.broker import AMQP_ERRORS, Broker
from aiosd.daemon.transport.delivery import Delivery, ack_all
from aiosd.sdk.cluster import EVENTS_QUEUE, Goodbye, Heartbeat, Outcome, decode_event
from aiosd.sdk.errors import ProtocolError, ServiceUnavailable
from aiosd.sdk.process import metrics
from aiosd.sdk.process.lifecycle import Lifecycle
from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.process.settings import Settings
from aiosd.sdk.protocol import INGRESS_QUEUE, ErrorCode

log = get_logger(__name__)
PUMP_SECONDS = 0.2


class Scheduler:
    """One scheduler process."""

    def __init__(self, settings: Settings, lifecycle: Lifecycle, graph: SchedulerGraph | None = None) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.graph = graph or build_scheduler(settings)
        self.store = self.graph.store
        self.pipeline = self.graph.pipeline
        self.leased = self.graph.leased
        self.dispatcher = self.graph.dispatcher
        self.housekeeping = self.graph.housekeeping
        self._threads = self.graph.threads
        self._outbox = self.graph.outbox
        self._broker: Broker | None = None
        self._serving = Serving()  # ingress batches being served now
        self._applying = Serving()  # event batches being applied now
        wait = settings.batch_wait_ms / 1000.0
        self._batcher = Batcher(settings.batch_size, wait, self._on_batch, busy=self._serving.busy)
        self._events = Batcher(settings.batch_size, wait, self._on_event_batch, busy=self._applying.busy)

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the syscall threads, tracked as in-flight work."""
        self._threads.submit(fn)

    @property
    def inflight(self) -> int:
        """Tasks submitted and not finished."""
        return self._threads.inflight

    def _attach(self, broker: Broker | None) -> None:
        self._broker = broker
        self._outbox.attach(broker)

    # -- run ---------------------------------------------------------------------

    def run(self) -> None:
        """Serve until a stop is requested. Raises ServiceUnavailable if services never come up."""
        try:
            self._wait_for_store()
            self.store.ensure_indexes()
            self.graph.counters.ensure_indexes()
            loaded = self.leased.book.load(self.settings.lease_ttl)
            recounted = self.graph.recovery.recount_quotas()  # before anything is served again
            batches = self.graph.tasks.recount_batches()
            self.graph.presence.beat()
            self._metrics_on()
            self._attach(self._connect(self.settings.connect_timeout))
        except ServiceUnavailable:
            if self.lifecycle.stop_requested.is_set():
                self.store.close()
                return  # asked to stop while waiting for services: a clean exit
            raise
        self.submit(self._recover)
        assert self._broker is not None
        self._consume(self._broker)
        self.dispatcher.start()
        self.lifecycle.ready()
        log.info(
            "scheduler_ready",
            threads=self.settings.threads,
            prefetch=self.settings.prefetch,
            policy=self.settings.policy,
            leased_calls=loaded,
            quotas_recounted=recounted,
            batches_recounted=batches,
        )
        try:
            self._loop()
        finally:
            self._shutdown()

    def _loop(self) -> None:
        next_sweep = time.monotonic() + self.settings.sweep_interval
        while not self.lifecycle.stop_requested.is_set():
            try:
                assert self._broker is not None
                self._broker.pump(self._events.wait(self._batcher.wait(PUMP_SECONDS)))
                for batcher in (self._batcher, self._events):
                    if batcher.due():
                        batcher.flush()
                if not self._broker.is_open:
                    raise pika.exceptions.ChannelClosed(0, "a channel closed")
            except AMQP_ERRORS as exc:
                log.error("broker_connection_lost", error=repr(exc))
                metrics.BROKER_ERRORS.inc()
                self._reconnect()
            self.lifecycle.tick()
            self.housekeeping.tick()
            if time.monotonic() >= next_sweep:
                self.submit(self._sweep)
                next_sweep = time.monotonic() + self.settings.sweep_interval

    def _reconnect(self) -> None:
        old = self._broker
        self._attach(None)
        self._batcher.clear()  # the broker redelivers them on the new connection
        self._events.clear()
        if old is not None:
            old.close()
        while not self.lifecycle.stop_requested.is_set():
            try:
                broker = self._connect(5.0)
                self._attach(broker)
                self._consume(broker)
                log.info("broker_reconnected")
                return
            except ServiceUnavailable as exc:
                log.warning("broker_reconnect_failed", error=str(exc))
                self.lifecycle.stop_requested.wait(2.0)

    def _consume(self, broker: Broker) -> None:
        broker.consume(INGRESS_QUEUE, self._on_delivery)
        broker.consume(EVENTS_QUEUE, self._on_event)

    def _shutdown(self) -> None:
        self.lifecycle.stopping()
        self.dispatcher.stop()
        broker = self._broker
        deadline = time.monotonic() + self.settings.shutdown_timeout
        log.info("scheduler_stopping", inflight=self.inflight)
        try:
            if broker is not None:
                broker.stop_consuming()
                self._batcher.flush()  # received already: serve them rather than hand them back
                self._events.flush()
                # Keep pumping so in-flight work can still ack and reply.
                self._drain(broker, deadline)
                if self.leased.endings.parked():  # a last try, once nothing else can park more
                    self.submit(self.leased.retry_parked)
                    self._drain(broker, deadline)
                broker.pump(0)
        except AMQP_ERRORS as exc:
            log.warning("shutdown_broker_error", error=repr(exc))
        finally:
            self._threads.shutdown()
            if broker is not None:
                broker.close()
            self._retire_sent()
            self._write_book()
            self._advance_audit_head()
            self._settle_counts()
            self._say_goodbye()
            self.store.close()
        if parked := self.leased.endings.parked():  # the next start runs them again, from their live records
            log.warning("replies_parked_at_stop", calls=parked)
        log.info("scheduler_stopped", unfinished=self.inflight)

    def _drain(self, broker: Broker, deadline: float) -> None:
        while self.inflight and time.monotonic() < deadline and broker.is_open:
            broker.pump(PUMP_SECONDS)

    def _connect(self, timeout: float) -> Broker:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return Broker(self.settings.amqp_url, self.settings.prefetch)
            except ServiceUnavailable as exc:
                if time.monotonic() >= deadline or self.lifecycle.stop_requested.is_set():
                    raise
                log.warning("broker_unavailable_retrying", error=str(exc))
                time.sleep(1.0)

    def _wait_for_store(self) -> None:
        deadline = time.monotonic() + self.settings.connect_timeout
        while True:
            try:
                self.store.ping()
                return
            except ServiceUnavailable as exc:
                if time.monotonic() >= deadline or self.lifecycle.stop_requested.is_set():
                    raise
                log.warning("store_unavailable_retrying", error=str(exc))
                time.sleep(1.0)

    def _on_delivery(self, d: Delivery) -> None:
        self._batcher.add(d)

    def _on_batch(self, batch: list[Delivery]) -> None:
        self._hand_on(lambda: self.pipeline.handle(batch), self._serving, self._batcher)

    def _on_event(self, d: Delivery) -> None:
        self._events.add(d)

    def _on_event_batch(self, batch: list[Delivery]) -> None:
        self._hand_on(lambda: self._handle_events(batch), self._applying, self._events)

    def _hand_on(self, serve: Callable[[], None], serving: Serving, gathered: Batcher) -> None:
        """Serve a batch on the syscall threads, counted in ``serving`` while it runs (see :class:`Batcher`)."""

        def counted() -> None:
            try:
                serve()
            finally:
                serving.done(gathered, self._wake)

        serving.started()
        try:
            self.submit(counted)
        except BaseException:  # the pool is shut down: the batch is not served, so not counted either
            serving.done(gathered, None)
            raise

    def _wake(self) -> None:
        broker = self._broker
        if broker is not None:
            broker.wake()

    def _handle_events(self, batch: list[Delivery]) -> None:
        """Apply a batch of worker events; acknowledge them once applied."""
        events: list[Heartbeat | Goodbye | Outcome] = []
        good: list[Delivery] = []
        for d in batch:
            try:
                events.append(decode_event(d.body))
                good.append(d)
            except ProtocolError as exc:
                log.warning("bad_worker_event", code=exc.code.value, reason=exc.message)
                d.dead_letter(exc.code.value, exc.message)
        try:
            self.leased.on_events(events)
        except TRANSIENT as exc:
            log.error("store_unavailable", error=str(exc))
            time.sleep(RETRY_PAUSE)
            for d in good:
                d.nack(True)
            return
        except Exception as exc:  # as for deliveries: retrying what the store refuses cannot help
            if len(good) > 1:
                log.warning("event_batch_split", events=len(good), error=f"{type(exc).__name__}: {exc}")
                for d in good:
                    self._handle_events([d])
                return
            log.exception("worker_event_refused")
            good[0].dead_letter(ErrorCode.INTERNAL.value, f"event could not be applied: {type(exc).__name__}: {exc}")
            return
        ack_all(good)

    def _retire_sent(self) -> None:
        try:
            self.graph.completion.retire()
        except Exception as exc:  # recovery re-sends those replies instead: harmless
            log.warning("retire_on_stop_failed", error=repr(exc))

    def _write_book(self) -> None:
        try:
            self.leased.book.flush()
        except Exception as exc:  # the next start re-runs what the record does not show: harmless
            log.warning("lease_book_write_failed", error=repr(exc))

    def _advance_audit_head(self) -> None:
        try:
            self.graph.audit.advance_head()
        except Exception as exc:  # a hint only: the next writer walks forward from an older head
            log.warning("audit_head_write_failed", error=repr(exc))

    def _settle_counts(self) -> None:
        try:
            self.graph.meter.settle(everything=True)
        except Exception as exc:  # counts of calls just finished or admitted: the quota undercounts them
            log.warning("counts_lost", error=repr(exc))
        try:
            self.leased.totals.write()
        except Exception as exc:  # the operator's lifetime totals miss the last calls
            log.warning("usage_totals_lost", error=repr(exc))

    def _metrics_on(self) -> None:
        """Serve the scheduler's metrics; the gauges read the lease book, task leases and audit chain when scraped."""
        metrics.serve("scheduler", self.settings.metrics_host, self.settings.metrics_port)
        book = self.leased.book
        metrics.gauge_from(metrics.BACKLOG, lambda: book.count("queued"))
        metrics.gauge_from(metrics.LEASES, lambda: book.count("leased"))
        metrics.gauge_from(metrics.TASKS_RUNNING, lambda: len(self.graph.tasks.leases))
        metrics.gauge_from(metrics.AUDIT_RECORDS, self.graph.audit.length)

    def _say_goodbye(self) -> None:
        try:
            self.graph.presence.gone()
        except Exception as exc:  # status then reports it dead after three missed beats, as after a crash
            log.warning("presence_not_cleared", error=repr(exc))

    def _recover(self) -> None:
        count = self.graph.recovery.recover()
        if count:
            log.info("recovered", syscalls=count)

    def _sweep(self) -> None:
        # Only records old enough that no live delivery can still be serving them.
        count = self.graph.recovery.recover(older_than=self.settings.sweep_interval)
        if count:
            log.info("sweep_recovered", syscalls=count)
