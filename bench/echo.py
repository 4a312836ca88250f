"""The broker ceiling's consumer: answers every syscall at once, with no database.

It declares the topology exactly as the scheduler does (the scheduler's own
``declare_topology``), consumes the ingress queue with manual acks and the
scheduler's prefetch on one pika connection, and for every request acks it
and publishes an ok :class:`~aiosd.sdk.protocol.Reply` (persistent, like the
scheduler's) to its ``reply_to`` with its ``correlation_id``. The SDK client
therefore does exactly what it does against aiosd, and the difference is the
kernel.

Run as a child process by ``bench/kernel.py``::

    python bench/echo.py AMQP_URL PREFETCH

It prints ``echo_ready`` once it consumes and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from aiosd.daemon.transport.broker import declare_topology
from aiosd.sdk.protocol import CONTENT_TYPE, INGRESS_QUEUE, PROTOCOL_VERSION, VERSION_HEADER, Reply, encode


def serve(url: str, prefetch: int) -> None:
    """Echo until signalled."""
    params = pika.URLParameters(url)
    params.client_properties = {"connection_name": "aiosd-bench-echo"}
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    declare_topology(ch)
    ch.basic_qos(prefetch_count=prefetch)
    ch.basic_consume(INGRESS_QUEUE, _answer, auto_ack=False)
    stopping = False

    def stop(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("echo_ready", flush=True)
    while not stopping:
        conn.process_data_events(time_limit=0.2)
    conn.close()


def _answer(ch: BlockingChannel, method: Basic.Deliver, props: BasicProperties, _body: bytes) -> None:
    ch.basic_ack(method.delivery_tag)
    if not props.reply_to:
        return
    call_id = props.message_id or props.correlation_id or ""
    reply = Reply.ok(call_id, method.routing_key or "", {"echo": True})
    out = BasicProperties(
        content_type=CONTENT_TYPE,
        content_encoding="utf-8",
        correlation_id=props.correlation_id or call_id,
        headers={VERSION_HEADER: PROTOCOL_VERSION},
        delivery_mode=2,
    )
    ch.basic_publish("", props.reply_to, encode(reply), out)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
