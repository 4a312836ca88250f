"""The scheduler process: wires settings, stores, kernel, pipeline and broker.

The main thread owns the AMQP connection and runs the loop; a thread pool
serves syscalls. SIGTERM stops consumption, lets in-flight work finish within
``shutdown_timeout`` and exits 0; prefetched messages that never started go
back to RabbitMQ when the connection closes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pika.exceptions

from aiosd.sdk.cluster import EVENTS_QUEUE, decode_event
from aiosd.sdk.errors import ProtocolError
from aiosd.sdk.protocol import INGRESS_QUEUE, ErrorCode, Reply

from .amqp import AMQP_ERRORS, Broker
from .accesscontrol import AccessControl
from .errors import ServiceUnavailable
from .intake import Authorizer, Delivery, Intake
from .dispatcher import Dispatcher
from .kernel import Kernel
from .lifecycle import Lifecycle
from .llm import LlmService
from .logs import get_logger
from .periodic import Periodic
from .pipeline import RETRY_PAUSE, TRANSIENT, Pipeline
from .policies import make_policy
from .records import Records
from .sessions import SessionService
from .settings import Settings
from .storage import STORAGE_SWEEP_INTERVAL
from .store import Store
from .toolregistry import ToolRegistry
from .tools import ToolService

log = get_logger(__name__)
PUMP_SECONDS = 0.2


class Scheduler:
    """One scheduler process."""

    def __init__(self, settings: Settings, lifecycle: Lifecycle, authorizer: Authorizer | None = None) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.store = Store(settings.mongo_url, settings.mongo_db, timeout=min(settings.connect_timeout, 5.0))
        self._executor = ThreadPoolExecutor(settings.threads, thread_name_prefix="aiosd-syscall")
        self._inflight: set[Future[None]] = set()
        self._inflight_lock = threading.Lock()
        self._broker: Broker | None = None
        self.access = access = AccessControl(self.store, settings)
        access.approvals.outbox = self
        self.tools = tools = ToolService(ToolRegistry.load(), access.policies)
        access.authorizer.irreversible = access.approvals.irreversible = tools.irreversible
        intake = Intake(
            max_body_bytes=settings.max_body_bytes,
            allow_anonymous=settings.dev_allow_anonymous,
            authorizer=authorizer or access.authorizer,
            checks={"tool.call": tools.check},
        )
        sessions = SessionService(self.store.sessions)
        kernel = Kernel(self.store, sessions, access.memory_guard, storage_guard=access.storage_guard, tools=tools)
        self.pipeline = Pipeline(
            intake, Records(self.store.syscalls, self.store.results), access.audit,
            kernel, self, self.submit, defer=lambda env: self.llm.submit(env),
            gate=access.approvals,
        )
        self.llm = LlmService(
            self.store, settings, self.pipeline.finish, wake=lambda: self.dispatcher.wake(), sessions=sessions,
            on_usage=access.charge, may_retry=tools.may_retry,
        )
        self.dispatcher = Dispatcher(
            self.llm, make_policy(settings.policy, settings.slice_tokens), settings, self._publish_lease,
            caps=access.llm_caps,
        )
        self.housekeeping = Periodic(self.submit)
        access.housekeeping(self.housekeeping, self.pipeline.execute, self.pipeline.finish)
        self.housekeeping.every(STORAGE_SWEEP_INTERVAL, "storage_sweep", kernel.storage.sweep)

    # -- Outbox: replies always go out on the current connection ---------------

    def reply(self, reply_to: str, correlation_id: str, reply: Reply, on_sent: Callable[[], None]) -> None:
        """Publish a reply on the live connection; dropped (and re-sent by recovery) if none."""
        broker = self._broker
        if broker is not None:
            broker.reply(reply_to, correlation_id, reply, on_sent)

    def _publish_lease(self, worker_id: str, body: bytes) -> None:
        broker = self._broker
        if broker is not None:
            broker.publish_lease(worker_id, body)

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the syscall threads, tracked as in-flight work."""
        fut = self._executor.submit(_guarded, fn)
        with self._inflight_lock:
            self._inflight.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: Future[None]) -> None:
        with self._inflight_lock:
            self._inflight.discard(fut)

    @property
    def inflight(self) -> int:
        """Tasks submitted and not finished."""
        with self._inflight_lock:
            return len(self._inflight)

    # -- run ---------------------------------------------------------------------

    def run(self) -> None:
        """Serve until a stop is requested. Raises ServiceUnavailable if services never come up."""
        try:
            self._wait_for_store()
            self.store.ensure_indexes()
            self.access.ensure_indexes()
            self._broker = self._connect(self.settings.connect_timeout)
        except ServiceUnavailable:
            if self.lifecycle.stop_requested.is_set():
                self.store.close()
                return  # asked to stop while waiting for services: a clean exit
            raise
        self.submit(self._recover)
        self._consume(self._broker)
        self.dispatcher.start()
        self.lifecycle.ready()
        log.info("scheduler_ready", threads=self.settings.threads, prefetch=self.settings.prefetch, policy=self.settings.policy)
        try:
            self._loop()
        finally:
            self._shutdown()

    def _loop(self) -> None:
        next_sweep = time.monotonic() + self.settings.sweep_interval
        while not self.lifecycle.stop_requested.is_set():
            try:
                assert self._broker is not None
                self._broker.pump(PUMP_SECONDS)
                if not self._broker.is_open:
                    raise pika.exceptions.ChannelClosed(0, "a channel closed")
            except AMQP_ERRORS as exc:
                log.error("broker_connection_lost", error=repr(exc))
                self._reconnect()
            self.lifecycle.tick()
            self.housekeeping.tick()
            if time.monotonic() >= next_sweep:
                self.submit(self._sweep)
                next_sweep = time.monotonic() + self.settings.sweep_interval

    def _reconnect(self) -> None:
        old, self._broker = self._broker, None
        if old is not None:
            old.close()
        while not self.lifecycle.stop_requested.is_set():
            try:
                self._broker = self._connect(5.0)
                self._consume(self._broker)
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
                # Keep pumping so in-flight work can still ack and reply.
                while self.inflight and time.monotonic() < deadline and broker.is_open:
                    broker.pump(PUMP_SECONDS)
                broker.pump(0)
        except AMQP_ERRORS as exc:
            log.warning("shutdown_broker_error", error=repr(exc))
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
            if broker is not None:
                broker.close()
            self.store.close()
        log.info("scheduler_stopped", unfinished=self.inflight)

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
        self.submit(lambda: self.pipeline.handle(d))

    def _on_event(self, d: Delivery) -> None:
        self.submit(lambda: self._handle_event(d))

    def _handle_event(self, d: Delivery) -> None:
        try:
            event = decode_event(d.body)
        except ProtocolError as exc:
            log.warning("bad_worker_event", code=exc.code.value, reason=exc.message)
            d.dead_letter(exc.code.value, exc.message)
            return
        try:
            self.llm.on_event(event)
        except TRANSIENT as exc:
            log.error("store_unavailable", error=str(exc))
            time.sleep(RETRY_PAUSE)
            d.nack(True)
            return
        except Exception as exc:  # as for deliveries: retrying an event the store refuses cannot help
            log.exception("worker_event_refused")
            d.dead_letter(ErrorCode.INTERNAL.value, f"event could not be applied: {type(exc).__name__}: {exc}")
            return
        d.ack()

    def _recover(self) -> None:
        count = self.pipeline.recover()
        if count:
            log.info("recovered", syscalls=count)

    def _sweep(self) -> None:
        # Only records old enough that no live delivery can still be serving them.
        count = self.pipeline.recover(older_than=self.settings.sweep_interval)
        if count:
            log.info("sweep_recovered", syscalls=count)


def _guarded(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        log.exception("task_failed")
