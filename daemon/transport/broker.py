"""The scheduler's AMQP connection, owned by one thread.

:class:`Broker` wraps a pika ``BlockingConnection``. Only the thread that
calls :meth:`Broker.pump` touches the connection; worker threads settle
messages and publish replies by queueing them for it. Dead letters go out on
a second channel with publisher confirms, so a refused message is
acknowledged only once its dead-lettered copy is safe.

The connection thread is the busiest of the scheduler, so what other threads
hand it is cheap: they queue operations in order, one wake-up
(``add_callback_threadsafe``) takes everything queued by then, and acks and
publishes are framed into the output buffer without waiting for each to be
written (pika's blocking channel methods poll the socket once per call) and
written out together, in order, at the end of the wake-up.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from aiosd.daemon.transport.delivery import Delivery
from aiosd.daemon.transport.properties import install as install_tolerant_properties
from aiosd.sdk.cluster import EVENTS_QUEUE, WORKER_EXCHANGE
from aiosd.sdk.errors import ServiceUnavailable
from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.protocol import (
    CONTENT_TYPE,
    DEAD_AGENT_HEADER,
    DEAD_CODE_HEADER,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    DEAD_REASON_HEADER,
    INGRESS_EXCHANGE,
    INGRESS_QUEUE,
    MAX_PRIORITY,
    PROTOCOL_VERSION,
    VERSION_HEADER,
    Reply,
    encode,
)
from aiosd.sdk.tasks import TASK_QUEUE

log = get_logger(__name__)

AMQP_ERRORS = (pika.exceptions.AMQPError, OSError)


def declare_topology(ch: BlockingChannel) -> None:
    """Declare the exchanges and queues aiosd uses (idempotent)."""
    ch.exchange_declare(DEAD_LETTER_EXCHANGE, "fanout", durable=True)
    ch.queue_declare(DEAD_LETTER_QUEUE, durable=True)
    ch.queue_bind(DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE)
    ch.exchange_declare(INGRESS_EXCHANGE, "topic", durable=True)
    ch.queue_declare(
        INGRESS_QUEUE,
        durable=True,
        arguments={"x-max-priority": MAX_PRIORITY, "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE},
    )
    ch.queue_bind(INGRESS_QUEUE, INGRESS_EXCHANGE, "#")
    ch.exchange_declare(WORKER_EXCHANGE, "direct", durable=True)
    ch.queue_declare(EVENTS_QUEUE, durable=True)
    declare_task_queue(ch)


def declare_task_queue(ch: BlockingChannel) -> None:
    """The durable priority queue of task ids that runners consume (idempotent)."""
    ch.queue_declare(TASK_QUEUE, durable=True, arguments={"x-max-priority": MAX_PRIORITY})


def task_message(task_id: str, priority: int) -> tuple[bytes, BasicProperties]:
    """The body and properties of a task's message on :data:`TASK_QUEUE`."""
    props = BasicProperties(
        content_type=CONTENT_TYPE,
        headers={VERSION_HEADER: PROTOCOL_VERSION},
        delivery_mode=2,
        priority=min(max(priority, 0), MAX_PRIORITY),
        message_id=task_id,
    )
    return json.dumps({"task": task_id}).encode(), props


class Broker:
    """One connection to RabbitMQ: consume the ingress queue, publish replies."""

    def __init__(self, url: str, prefetch: int) -> None:
        install_tolerant_properties()  # a hostile header table must not raise out of pika's I/O loop
        params = pika.URLParameters(url)
        params.heartbeat = 30
        params.blocked_connection_timeout = 60
        params.client_properties = {"connection_name": "aiosd-scheduler"}
        try:
            self._conn = pika.BlockingConnection(params)
            self._ch = self._conn.channel()
            declare_topology(self._ch)
            self._ch.basic_qos(prefetch_count=prefetch)
            self._dead = self._conn.channel()
            self._dead.confirm_delivery()
        except AMQP_ERRORS as exc:
            raise ServiceUnavailable(f"RabbitMQ is unreachable at {_safe(params)}: {exc!r}") from exc
        self._tags: list[str] = []
        # The channel under the blocking wrapper: frames an ack or publish without flushing it.
        self._raw = self._ch._impl
        self._queued: deque[Callable[[], None]] = deque()
        self._queued_lock = threading.Lock()
        self._wake_pending = False

    # -- owner thread ------------------------------------------------------------

    def consume(self, queue: str, on_delivery: Callable[[Delivery], None]) -> None:
        """Deliver the messages of ``queue`` to ``on_delivery`` (manual acks)."""
        callback = partial(self._on_message, on_delivery)
        self._tags.append(self._ch.basic_consume(queue, callback, auto_ack=False))

    def stop_consuming(self) -> None:
        """Stop new deliveries; messages prefetched but unacked go back on close."""
        while self._tags and self._ch.is_open:
            self._ch.basic_cancel(self._tags.pop())

    def pump(self, seconds: float) -> None:
        """Run I/O and queued callbacks for up to ``seconds``."""
        self._conn.process_data_events(time_limit=seconds)

    def wake(self) -> None:
        """Make the connection thread return from :meth:`pump` soon (thread-safe; one wake-up for many)."""
        self._later(_nothing)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn.is_open:
            try:
                self._conn.close()
            except AMQP_ERRORS:
                pass

    @property
    def is_open(self) -> bool:
        """Whether the connection and its channels are usable (a channel can die alone)."""
        return bool(self._conn.is_open and self._ch.is_open and self._dead.is_open)

    def _on_message(
        self,
        on_delivery: Callable[[Delivery], None],
        ch: BlockingChannel,
        method: Basic.Deliver,
        props: BasicProperties,
        body: bytes,
    ) -> None:
        tag = method.delivery_tag
        d = Delivery(
            body=body,
            ack=partial(self._later, partial(self._ack, tag)),
            nack=lambda requeue: self._later(partial(self._nack, tag, requeue)),
            dead_letter=lambda code, reason: self._later(
                partial(self._dead_letter, tag, method, props, body, code, reason)
            ),
            message_id=props.message_id,
            correlation_id=props.correlation_id,
            reply_to=props.reply_to,
            priority=props.priority,
            user_id=props.user_id,
            routing_key=method.routing_key or "",
            headers=dict(props.headers or {}),
            redelivered=bool(method.redelivered),
            content_type=props.content_type,
            content_encoding=props.content_encoding,
            tag=tag,
            ack_many=self.ack_many,
        )
        on_delivery(d)

    # -- any thread ----------------------------------------------------------------

    def reply(self, reply_to: str, correlation_id: str, reply: Reply, on_sent: Callable[[], None]) -> None:
        """Publish ``reply`` to the queue ``reply_to`` (thread-safe)."""
        self._later(partial(self._publish_reply, reply_to, correlation_id, encode(reply), on_sent))

    def ack_many(self, tags: list[int]) -> None:
        """Acknowledge deliveries of this connection's ingress channel (thread-safe, one hand-over)."""
        self._later(partial(self._ack_tags, list(tags)))

    def publish_task(self, task_id: str, priority: int) -> None:
        """Queue a task for the runners (thread-safe; sent in order with the acks that follow)."""
        body, props = task_message(task_id, priority)
        self._later(partial(self._publish, "", TASK_QUEUE, body, props))

    def publish_lease(self, worker_id: str, body: bytes) -> None:
        """Send a lease to a worker's queue (thread-safe). A lost lease simply expires."""
        props = BasicProperties(content_type=CONTENT_TYPE, headers={VERSION_HEADER: PROTOCOL_VERSION}, delivery_mode=1)
        self._later(partial(self._publish, WORKER_EXCHANGE, worker_id, body, props))

    def _later(self, fn: Callable[[], None]) -> None:
        """Queue ``fn`` for the connection thread, in order; wake it once for everything queued meanwhile."""
        with self._queued_lock:
            self._queued.append(fn)
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._conn.add_callback_threadsafe(self._run_queued)
        except AMQP_ERRORS:
            # The connection is gone: unacked messages are redelivered and
            # unsent replies are re-sent by recovery, so dropping is safe.
            log.warning("connection_gone_callback_dropped")

    def _run_queued(self) -> None:
        with self._queued_lock:
            self._wake_pending = False  # what is queued from now on needs a wake-up of its own
            todo, self._queued = self._queued, deque()
        for fn in todo:
            fn()
        # Write them all now (one flush; inside a callback this only does I/O, it dispatches nothing).
        self._conn.process_data_events(0)

    def _publish(self, exchange: str, routing_key: str, body: bytes, props: BasicProperties) -> None:
        # A closed channel raises: the connection is then replaced, and what was not sent is sent again
        # (unacked messages come back, replies not marked sent are re-sent by recovery).
        self._raw.basic_publish(exchange, routing_key, body, props)

    def _ack(self, tag: int) -> None:
        if self._ch.is_open:
            self._raw.basic_ack(tag)

    def _ack_tags(self, tags: list[int]) -> None:
        if self._ch.is_open:
            for tag in tags:
                self._raw.basic_ack(tag)

    def _nack(self, tag: int, requeue: bool) -> None:
        if self._ch.is_open:
            self._raw.basic_nack(tag, requeue=requeue)

    def _publish_reply(self, reply_to: str, correlation_id: str, body: bytes, on_sent: Callable[[], None]) -> None:
        props = BasicProperties(
            content_type=CONTENT_TYPE,
            content_encoding="utf-8",
            correlation_id=correlation_id,
            headers={VERSION_HEADER: PROTOCOL_VERSION},
            delivery_mode=2,
        )
        self._publish("", reply_to, body, props)
        on_sent()

    def _dead_letter(
        self, tag: int, method: Basic.Deliver, props: BasicProperties, body: bytes, code: str, reason: str
    ) -> None:
        headers: dict[str, Any] = dict(props.headers or {})
        headers.update({DEAD_CODE_HEADER: code, DEAD_REASON_HEADER: reason, "x-aiosd-routing-key": method.routing_key})
        if props.user_id:
            headers[DEAD_AGENT_HEADER] = props.user_id
        # No user_id on the copy: RabbitMQ refuses (and closes the channel for) a user_id
        # that is not the publishing connection's user, and the scheduler publishes it.
        copy = BasicProperties(
            content_type=props.content_type,
            message_id=props.message_id,
            correlation_id=props.correlation_id,
            reply_to=props.reply_to,
            priority=props.priority,
            headers=headers,
            delivery_mode=2,
        )
        try:
            self._dead.basic_publish(DEAD_LETTER_EXCHANGE, method.routing_key or "", body, copy)
        except AMQP_ERRORS as exc:
            # Fall back to the queue's own dead-lettering (reason "rejected").
            log.error("dead_letter_publish_failed", error=repr(exc))
            self._nack(tag, False)
            return
        self._ack(tag)


def _safe(params: pika.URLParameters) -> str:
    return f"{params.host}:{params.port}{params.virtual_host}"


def _nothing() -> None:
    pass
