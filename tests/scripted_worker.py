"""A worker whose every move the test decides, speaking the real cluster protocol over RabbitMQ.

It registers with heartbeats like ``aiosd worker`` but never runs a model:
the test reads the leases it receives and chooses what to report, when. That
is how lease expiry, late results and admission are tested exactly.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pika

from aiosd.sdk.cluster import (
    EVENTS_QUEUE,
    WORKER_EXCHANGE,
    Goodbye,
    Heartbeat,
    Lease,
    Outcome,
    Revoke,
    WorkerState,
    decode_order,
    worker_queue,
)
from aiosd.sdk.protocol import Usage


class ScriptedWorker:
    """Receives leases on its queue; heartbeats on a thread; reports outcomes on demand."""

    def __init__(
        self, url: str, worker_id: str, capacity: int = 1, model: str = "scripted-model", interval: float = 0.3
    ) -> None:
        self.url = url
        self.worker_id = worker_id
        self.capacity = capacity
        self.model = model
        self.interval = interval
        self.leases: queue.Queue[Lease] = queue.Queue()
        self.held: dict[str, Lease] = {}
        self.silent: set[str] = set()  # leases it holds but does not report (lets them expire)
        self.beating = True
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pub = pika.BlockingConnection(pika.URLParameters(url))
        self._pub_ch = self._pub.channel()
        self._pub_ch.confirm_delivery()
        self._thread = threading.Thread(target=self._consume, daemon=True)
        self._ready = threading.Event()

    def start(self) -> ScriptedWorker:
        self._thread.start()
        assert self._ready.wait(10), "scripted worker did not start"
        self._beat_thread = threading.Thread(target=self._beat_loop, daemon=True)
        self._beat_thread.start()
        return self

    # -- leases --------------------------------------------------------------------

    def next_lease(self, timeout: float = 20.0) -> Lease:
        lease = self.leases.get(timeout=timeout)
        with self._lock:
            self.held[lease.lease_id] = lease
        return lease

    def no_lease(self, wait: float) -> bool:
        try:
            lease = self.leases.get(timeout=wait)
        except queue.Empty:
            return True
        self.leases.put(lease)
        return False

    def finish(self, lease: Lease, text: str = "scripted answer", status: str = "done", **extra: Any) -> None:
        with self._lock:
            self.held.pop(lease.lease_id, None)
        outcome = Outcome(
            worker_id=self.worker_id,
            lease_id=lease.lease_id,
            key=lease.key,
            status=status,  # type: ignore[arg-type]
            text=text,
            finish_reason="stop",
            model=self.model,
            usage=Usage(prompt_tokens=5, completion_tokens=3),
            run_ms=1.0,
            **extra,
        )
        self._publish(outcome.model_dump_json().encode())

    # -- internals -------------------------------------------------------------------

    def heartbeat(self) -> None:
        with self._lock:
            held = [lid for lid in self.held if lid not in self.silent]
        state = WorkerState(
            worker_id=self.worker_id,
            host="test",
            backend="scripted",
            model=self.model,
            capacity=self.capacity,
            leases=held,
        )
        self._publish(Heartbeat(worker=state).model_dump_json().encode())

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self.beating:
                self.heartbeat()

    def _publish(self, body: bytes) -> None:
        with self._lock:
            self._pub_ch.basic_publish(
                "", EVENTS_QUEUE, body, pika.BasicProperties(content_type="application/json", delivery_mode=2)
            )

    def _consume(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        ch = conn.channel()
        ch.exchange_declare(WORKER_EXCHANGE, "direct", durable=True)
        ch.queue_declare(EVENTS_QUEUE, durable=True)
        q = worker_queue(self.worker_id)
        ch.queue_declare(q, exclusive=True, auto_delete=True)
        ch.queue_bind(q, WORKER_EXCHANGE, self.worker_id)
        ch.basic_consume(q, lambda c, m, p, body: self._order(decode_order(body)), auto_ack=True)
        self._ready.set()
        self.heartbeat()
        while not self._stop.is_set():
            conn.process_data_events(time_limit=0.2)
        conn.close()

    def _order(self, order: Lease | Revoke) -> None:
        if isinstance(order, Lease):  # the test settles its leases itself; a revoke is ignored
            self.leases.put(order)

    def goodbye(self) -> None:
        self._publish(Goodbye(worker_id=self.worker_id).model_dump_json().encode())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self._pub.is_open:
            self._pub.close()


def chat_args(text: str = "hello", **extra: Any) -> dict[str, Any]:
    """Minimal llm.chat arguments."""
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 8, **extra}


def wait_until(predicate: Any, timeout: float = 20.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")
