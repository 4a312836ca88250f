"""The AMQP side of the SDK: publish requests, correlate replies.

One :class:`Transport` owns two kombu connections. The *reply* connection is
owned by a background thread that drains the client's private reply queue and
resolves the waiting futures; the *publish* connection runs with publisher
confirms, so ``publish`` returns only once the broker holds the request, and
is serialised by a lock so any thread may call it.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any

import kombu
from kombu.message import Message

from .errors import ConnectionFailed, ProtocolError
from .protocol import (
    CONTENT_TYPE,
    INGRESS_EXCHANGE,
    MAX_PRIORITY,
    PROTOCOL_VERSION,
    VERSION_HEADER,
    Reply,
    Request,
    Status,
    decode_reply,
    encode,
    reply_queue_prefix,
)

_RETRY_POLICY = {"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}


class Transport:
    """Publishes syscalls for one agent and hands back their replies as futures."""

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self.url = url
        self._connect_timeout = connect_timeout
        probe = kombu.Connection(url)
        self.agent: str = probe.userid or "guest"
        probe.release()
        self.reply_queue = f"{reply_queue_prefix(self.agent)}{uuid.uuid4().hex[:16]}"
        self._pending: dict[str, Future[Reply]] = {}
        self._pending_lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._publisher: kombu.Connection | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Connect both connections and declare the reply queue; raise on failure."""
        self._thread = threading.Thread(target=self._run, name="aiosd-replies", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._connect_timeout) or self._error is not None:
            self.close()
            raise ConnectionFailed(f"cannot connect to {self._safe_url()}: {self._error}")
        self._publisher = self._connect(confirm=True)

    def close(self) -> None:
        """Stop the reply thread and close both connections."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._publisher is not None:
            self._publisher.release()
            self._publisher = None
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionFailed("client closed before the reply arrived"))

    # -- calls ---------------------------------------------------------------

    def publish(
        self,
        request: Request,
        *,
        message_id: str | None = None,
        priority: int = 0,
        want_reply: bool = True,
    ) -> tuple[str, Future[Reply]]:
        """Publish ``request``; return its id and a future for its reply."""
        if not 0 <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be between 0 and {MAX_PRIORITY}")
        call_id = message_id or uuid.uuid4().hex
        fut: Future[Reply] = Future()
        if want_reply:
            with self._pending_lock:
                self._pending[call_id] = fut
        try:
            self._publish(request, call_id, priority, want_reply)
        except BaseException:
            self.forget(call_id)
            raise
        return call_id, fut

    def forget(self, call_id: str) -> None:
        """Stop waiting for the reply to ``call_id`` (a late reply is dropped)."""
        with self._pending_lock:
            self._pending.pop(call_id, None)

    def _publish(self, request: Request, call_id: str, priority: int, want_reply: bool) -> None:
        if self._publisher is None:
            raise ConnectionFailed("client is not connected")
        props: dict[str, Any] = {
            "message_id": call_id,
            "correlation_id": call_id,
            "user_id": self.agent,
        }
        if want_reply:
            props["reply_to"] = self.reply_queue
        with self._publish_lock:
            try:
                producer = kombu.Producer(self._publisher)
                producer.publish(
                    encode(request),
                    exchange=INGRESS_EXCHANGE,
                    routing_key=request.syscall,
                    content_type=CONTENT_TYPE,
                    content_encoding="utf-8",
                    delivery_mode=2,
                    priority=priority,
                    headers={VERSION_HEADER: PROTOCOL_VERSION},
                    retry=True,
                    retry_policy=_RETRY_POLICY,
                    **props,
                )
            except Exception as exc:  # kombu/amqp raise many types; wrap at the boundary
                raise ConnectionFailed(f"publish failed: {exc}") from exc

    # -- reply thread --------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                self._consume()
                backoff = 0.2
            except Exception as exc:  # connection lost: reconnect unless closing
                self._error = exc
                if not self._ready.is_set():
                    self._ready.set()  # let start() report the failure
                    return
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _consume(self) -> None:
        conn = self._connect(confirm=False)
        try:
            queue = kombu.Queue(
                self.reply_queue, exclusive=True, auto_delete=True, durable=False
            )
            with kombu.Consumer(conn, [queue], on_message=self._on_message, no_ack=True):
                self._error = None
                self._ready.set()
                while not self._stop.is_set():
                    try:
                        conn.drain_events(timeout=0.5)
                    except TimeoutError:
                        conn.heartbeat_check()
        finally:
            conn.release()

    def _on_message(self, message: Message) -> None:
        try:
            reply = decode_reply(message.body)
        except ProtocolError:
            return  # not ours to handle; nothing waits on a reply we cannot read
        if reply.status is Status.PENDING:
            return  # interim (waiting for a human approval): the final reply follows
        key = message.properties.get("correlation_id") or reply.id
        with self._pending_lock:
            fut = self._pending.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(reply)

    def _connect(self, *, confirm: bool) -> kombu.Connection:
        options = {"confirm_publish": True} if confirm else {}
        # Only the reply thread can service heartbeats; the publish connection
        # runs without them and is revived by kombu's retry when found dead.
        conn = kombu.Connection(
            self.url,
            heartbeat=0 if confirm else 30,
            connect_timeout=self._connect_timeout,
            transport_options=options,
        )
        try:
            conn.ensure_connection(max_retries=2, interval_start=0.2, timeout=self._connect_timeout)
        except Exception as exc:
            raise ConnectionFailed(f"cannot connect to {self._safe_url()}: {exc}") from exc
        return conn

    def _safe_url(self) -> str:
        return str(kombu.Connection(self.url).as_uri(include_password=False))
