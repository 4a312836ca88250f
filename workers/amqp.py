"""The worker's AMQP connection, owned by the main thread.

:class:`WorkerBroker` wraps one pika ``BlockingConnection`` with two channels:
one consumes the worker's lease queue (manual acks, prefetch = capacity, so
RabbitMQ never hands it more calls than it may run), the other publishes
events with publisher confirms, so a lease is acked only once its outcome is
safe in the durable events queue. As in the scheduler, only the thread that
calls :meth:`WorkerBroker.pump` touches pika; other threads use
:meth:`WorkerBroker.later`.
"""

from __future__ import annotations

from collections.abc import Callable

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from aiosd.sdk.cluster import EVENTS_QUEUE, WORKER_EXCHANGE, Goodbye, Heartbeat, Outcome, worker_queue
from aiosd.sdk.errors import ServiceUnavailable
from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.protocol import CONTENT_TYPE, PROTOCOL_VERSION, VERSION_HEADER, encode

log = get_logger(__name__)

AMQP_ERRORS = (pika.exceptions.AMQPError, OSError)
#: The event could not be made safe (nacked or unroutable): its lease must not be acked.
PUBLISH_ERRORS = (pika.exceptions.NackError, pika.exceptions.UnroutableError)

OnLease = Callable[[int, bytes], None]


def declare_topology(ch: BlockingChannel, worker_id: str) -> str:
    """Declare the lease exchange, this worker's queue and the events queue; return the queue.

    The lease queue is exclusive, so RabbitMQ deletes it with the connection:
    leases sent to a dead worker vanish with it and simply expire at the
    scheduler. (Not auto-delete: that would delete it as soon as a draining
    worker cancels its consumer, before it could hand back what is still
    queued.) The events
    queue is durable and declared here too, so that no event of a worker that
    starts before the scheduler goes nowhere.
    """
    queue = worker_queue(worker_id)
    ch.exchange_declare(WORKER_EXCHANGE, "direct", durable=True)
    ch.queue_declare(queue, exclusive=True)
    ch.queue_bind(queue, WORKER_EXCHANGE, routing_key=worker_id)
    ch.queue_declare(EVENTS_QUEUE, durable=True)
    return queue


class WorkerBroker:
    """One connection to RabbitMQ: take leases, publish events with confirms."""

    def __init__(self, url: str, worker_id: str, capacity: int, on_lease: OnLease) -> None:
        params = pika.URLParameters(url)
        params.heartbeat = 30
        params.blocked_connection_timeout = 60
        params.client_properties = {"connection_name": f"aiosd-worker-{worker_id}"}
        try:
            self._conn = pika.BlockingConnection(params)
            self._leases = self._conn.channel()
            self.queue = declare_topology(self._leases, worker_id)
            self._leases.basic_qos(prefetch_count=capacity)
            self._events = self._conn.channel()
            self._events.confirm_delivery()
            # Outcomes go out in batches on a transactional channel: one commit (one round
            # trip, the broker has them on disk) for every outcome finished meanwhile.
            self._outcomes = self._conn.channel()
            self._outcomes.tx_select()
            self._outcomes.add_on_return_callback(self._on_return)
            # The channels under the blocking wrappers: frame without flushing (see publish_outcomes, ack).
            self._outcomes_raw = self._outcomes._impl
            self._leases_raw = self._leases._impl
            self._returned: set[str] = set()
        except AMQP_ERRORS as exc:
            self.close()
            raise ServiceUnavailable(f"RabbitMQ: cannot set up worker {worker_id} at {_safe(params)}: {exc!r}") from exc
        self._on_lease = on_lease
        self._tag: str | None = None

    # -- owner thread ------------------------------------------------------------

    def start_consuming(self) -> None:
        """Start delivering leases to ``on_lease(delivery_tag, body)``."""
        self._tag = self._leases.basic_consume(self.queue, self._on_message, auto_ack=False)

    def stop_consuming(self) -> None:
        """Take no more leases; pika requeues deliveries not yet dispatched."""
        if self._tag is not None and self._leases.is_open:
            self._leases.basic_cancel(self._tag)
        self._tag = None

    def get(self) -> tuple[int, bytes] | None:
        """One lease still waiting in the queue (used when draining), or None."""
        method, _props, body = self._leases.basic_get(self.queue, auto_ack=False)
        if method is None or method.delivery_tag is None:
            return None
        return method.delivery_tag, body

    def publish(self, event: Heartbeat | Outcome | Goodbye) -> None:
        """Publish ``event`` and wait for the broker's confirm.

        Raises one of :data:`PUBLISH_ERRORS` if the broker refused it, or an
        AMQP error if the connection is gone.
        """
        props = BasicProperties(
            content_type=CONTENT_TYPE,
            content_encoding="utf-8",
            delivery_mode=2,
            type=event.kind,
            headers={VERSION_HEADER: PROTOCOL_VERSION},
        )
        # mandatory: an unroutable event (events queue deleted) is an error, not a silent loss.
        self._events.basic_publish("", EVENTS_QUEUE, encode(event), props, mandatory=True)

    def publish_outcomes(self, outcomes: list[Outcome]) -> set[str]:
        """Publish ``outcomes`` and commit them together; return the lease ids the broker could not route.

        Nothing is committed if the connection fails first (an AMQP error is raised):
        the caller keeps the outcomes and publishes them again on the next connection.
        """
        self._returned = set()
        for outcome in outcomes:
            props = BasicProperties(
                content_type=CONTENT_TYPE,
                content_encoding="utf-8",
                delivery_mode=2,
                type=outcome.kind,
                message_id=outcome.lease_id,
                headers={VERSION_HEADER: PROTOCOL_VERSION},
            )
            # mandatory: an unroutable outcome (events queue deleted) is an error, not a silent loss.
            # Framed without a flush each (the blocking wrapper polls the socket per publish):
            # the commit writes them all and waits for the broker.
            self._outcomes_raw.basic_publish("", EVENTS_QUEUE, encode(outcome), props, mandatory=True)
        self._outcomes.tx_commit()
        self._conn.process_data_events(0)  # returns arrive before the commit's answer; dispatch them
        return set(self._returned)

    def _on_return(self, _ch: BlockingChannel, _method: Basic.Return, props: BasicProperties, _body: bytes) -> None:
        if props.message_id:
            self._returned.add(props.message_id)

    def ack(self, tag: int) -> None:
        """Settle a lease delivery."""
        if self._leases.is_open:
            self._leases_raw.basic_ack(tag)  # written by the next pump, with the acks queued by then

    def drop(self, tag: int) -> None:
        """Settle a lease delivery without running it again (no requeue)."""
        if self._leases.is_open:
            self._leases.basic_nack(tag, requeue=False)

    def pump(self, seconds: float) -> None:
        """Run I/O and queued callbacks for up to ``seconds``."""
        self._conn.process_data_events(time_limit=seconds)

    def close(self) -> None:
        """Close the connection (idempotent); the lease queue goes with it."""
        conn = getattr(self, "_conn", None)
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except AMQP_ERRORS:
                pass

    @property
    def is_open(self) -> bool:
        """Whether the connection is usable."""
        return bool(self._conn.is_open)

    def _on_message(self, _ch: BlockingChannel, method: Basic.Deliver, _props: BasicProperties, body: bytes) -> None:
        assert method.delivery_tag is not None
        self._on_lease(method.delivery_tag, body)

    # -- any thread ----------------------------------------------------------------

    def later(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` in the owner thread at its next pump; False if the connection is gone."""
        try:
            self._conn.add_callback_threadsafe(fn)
        except AMQP_ERRORS:
            return False
        return True


def _safe(params: pika.URLParameters) -> str:
    return f"{params.host}:{params.port} vhost {params.virtual_host}"
