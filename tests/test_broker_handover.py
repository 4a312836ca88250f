"""The scheduler's connection: what other threads hand it goes out complete and in order (real RabbitMQ).

Threads queue acks and replies; the connection thread takes everything queued
at each wake-up and writes it with the next pump (:mod:`aiosd.daemon.transport.broker`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pika

from aiosd.daemon.transport.broker import Broker
from aiosd.daemon.transport.delivery import Delivery
from aiosd.sdk.protocol import INGRESS_EXCHANGE, INGRESS_QUEUE, Reply

from .harness import World

MESSAGES = 400
THREADS = 4


def test_acks_and_replies_from_many_threads_all_go_out_in_each_threads_order(world: World) -> None:
    broker = Broker(world.amqp_url(), prefetch=MESSAGES)
    conn = world.pika()
    ch = conn.channel()
    replies = ch.queue_declare("", exclusive=True).method.queue
    for i in range(MESSAGES):
        ch.basic_publish(INGRESS_EXCHANGE, "memory.add", str(i).encode(), pika.BasicProperties(message_id=f"m{i}"))
    received: list[Delivery] = []
    broker.consume(INGRESS_QUEUE, received.append)
    deadline = time.monotonic() + 30
    while len(received) < MESSAGES and time.monotonic() < deadline:
        broker.pump(0.05)
    assert len(received) == MESSAGES

    sent = [0] * THREADS

    def settle(n: int) -> None:
        for d in received[n::THREADS]:
            reply = Reply.ok(d.message_id or "", "memory.add", {"n": n})
            broker.reply(replies, f"{n}:{d.message_id}", reply, lambda: None)
            d.ack()
            sent[n] += 1

    threads = [threading.Thread(target=settle, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        broker.pump(0.01)
    broker.pump(0.2)  # what was queued last is written by this pump
    got: list[Any] = []
    deadline = time.monotonic() + 30
    while len(got) < MESSAGES and time.monotonic() < deadline:
        method, props, _ = ch.basic_get(replies, auto_ack=True)
        if method is None:
            conn.sleep(0.05)
        else:
            got.append(props.correlation_id)
    assert sent == [MESSAGES // THREADS] * THREADS and len(got) == MESSAGES
    for n in range(THREADS):  # each thread's replies in the order it sent them
        mine = [int(c.split(":m")[1]) for c in got if c.startswith(f"{n}:")]
        assert mine == list(range(n, MESSAGES, THREADS))
    broker.close()  # anything it left unacknowledged goes back to the queue now
    time.sleep(0.5)
    left = ch.queue_declare(INGRESS_QUEUE, passive=True).method.message_count
    assert left == 0  # every ack reached the broker before the close
    conn.close()
