"""One connected session of a client: a publish connection and a reply connection.

Both connections belong to the transport's I/O thread, which is the only
thread that reads or writes them (py-amqp connections are not thread-safe).
The publish channel runs in confirm mode and is *pipelined*: requests are
written back to back and the broker's acks are matched to them by delivery
tag as they arrive, instead of waiting for each ack in turn.

The I/O thread waits in ``select`` on both sockets and a wake-up socket, so
it reads whatever arrives, writes whatever callers queue, and ticks the
heartbeats of both connections on time however busy or idle it is.
"""

from __future__ import annotations

import select
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import amqp
import kombu

from .protocol import CONTENT_TYPE, INGRESS_EXCHANGE, PROTOCOL_VERSION, VERSION_HEADER

#: Default AMQP heartbeat of SDK connections, in seconds.
DEFAULT_HEARTBEAT = 30
#: A reply queue nobody consumes is removed by the broker after this long (ms).
#: It outlives a reconnect, so replies sent while the client was away wait for it.
REPLY_QUEUE_EXPIRES_MS = 10 * 60 * 1000
# Socket timeout while reading the rest of a frame or writing one: a broker
# that stalls this long mid-frame is treated as a lost connection.
_IO_TIMEOUT = 10.0

OnAck = Callable[[int, bool], None]
OnMessage = Callable[[amqp.Message], None]


class PublishRefused(Exception):
    """The broker closed the publish channel: the requests it held unconfirmed were refused."""


def heartbeat_of(url: str, default: int = DEFAULT_HEARTBEAT) -> int:
    """The heartbeat the URL asks for (``?heartbeat=N``), else ``default``."""
    values = parse_qs(urlsplit(url).query).get("heartbeat")
    return int(float(values[-1])) if values else default


class Session:
    """Both connections of one connected period; any failure ends the whole session."""

    def __init__(
        self,
        url: str,
        *,
        reply_queue: str,
        heartbeat: int,
        connect_timeout: float,
        on_reply: OnMessage,
        on_ack: OnAck,
        on_nack: OnAck,
    ) -> None:
        self._url = url
        self._reply_queue = reply_queue
        self._heartbeat = heartbeat
        self._connect_timeout = connect_timeout
        self._on_reply = on_reply
        self._on_ack = on_ack
        self._on_nack = on_nack
        self._pub: amqp.Connection | None = None
        self._rep: amqp.Connection | None = None
        self._pch: Any = None
        self._next_tag = 1
        self._next_tick = 0.0
        # The interval between checks: a quarter of the heartbeat keeps each
        # side's traffic well inside the broker's two-missed-beats limit.
        self._tick_every = max(heartbeat / 4, 0.2) if heartbeat else 5.0

    def open(self, agent: str) -> None:
        """Connect both connections, enable confirms and (re-)declare and consume the reply queue."""
        tag = f"aiosd-sdk {agent} {self._reply_queue.rsplit('.', 1)[-1]}"
        self._pub = self._connect(f"{tag} publish")
        self._rep = self._connect(f"{tag} replies")
        self._pch = self._pub.channel()
        self._pch.confirm_select()
        self._pch.events["basic_ack"].add(self._on_ack)
        self._pch.events["basic_nack"].add(self._on_nack)
        rch = self._rep.channel()
        rch.queue_declare(
            queue=self._reply_queue,
            durable=False,
            exclusive=False,  # exclusive queues die with their connection; this one must outlive it
            auto_delete=False,
            arguments={"x-expires": REPLY_QUEUE_EXPIRES_MS},
        )
        rch.basic_consume(queue=self._reply_queue, no_ack=True, callback=self._on_reply)
        self._pub_poll, self._rep_poll = select.poll(), select.poll()
        self._pub_poll.register(self._pub.sock, select.POLLIN)
        self._rep_poll.register(self._rep.sock, select.POLLIN)
        self._next_tick = time.monotonic() + self._tick_every

    def _connect(self, name: str) -> amqp.Connection:
        info = kombu.Connection(self._url)  # kombu only parses the URL (scheme, vhost, TLS)
        port = info.port or info.transport.default_port
        conn = amqp.Connection(
            host=f"{info.hostname}:{port}",
            userid=info.userid,
            password=info.password,
            virtual_host=info.virtual_host or "/",
            ssl=info.ssl,
            heartbeat=self._heartbeat,
            connect_timeout=self._connect_timeout,
            client_properties={"connection_name": name, "product": "aiosd-sdk"},
        )
        conn.connect()
        conn.sock.settimeout(_IO_TIMEOUT)
        return conn

    def publish(self, routing_key: str, body: bytes, props: dict[str, Any]) -> int:
        """Write one request to the broker; return its delivery tag (the ack names it)."""
        msg = amqp.Message(
            body,
            content_type=CONTENT_TYPE,
            content_encoding="utf-8",
            delivery_mode=2,
            application_headers={VERSION_HEADER: PROTOCOL_VERSION},
            **props,
        )
        self._pch.basic_publish(msg, exchange=INGRESS_EXCHANGE, routing_key=routing_key)
        tag = self._next_tag
        self._next_tag += 1
        return tag

    def pump(self, timeout: float, wake: socket.socket) -> bool:
        """Wait up to ``timeout`` s for traffic; handle one frame per readable connection.

        Returns whether ``wake`` became readable. Raises on a lost connection,
        and :class:`PublishRefused` when the broker closed the publish channel.
        """
        assert self._pub is not None and self._rep is not None
        now = time.monotonic()
        wait = max(0.0, min(timeout, self._next_tick - now))
        readable, _, _ = select.select([self._pub.sock, self._rep.sock, wake], [], [], wait)
        if self._pub.sock in readable or _buffered(self._pub):
            try:
                _read_frames(self._pub, self._pub_poll)
            except amqp.exceptions.IrrecoverableChannelError as exc:
                raise PublishRefused(str(exc)) from exc
        if self._rep.sock in readable or _buffered(self._rep):
            _read_frames(self._rep, self._rep_poll)
        if time.monotonic() >= self._next_tick:
            # Ticked on a clock, not on idleness: a client busy receiving
            # replies must still send heartbeats (and notice a silent broker).
            self._pub.heartbeat_tick()
            self._rep.heartbeat_tick()
            self._next_tick = time.monotonic() + self._tick_every
        return wake in readable

    def close(self, *, delete_queue: bool) -> None:
        """Close both connections (deleting the reply queue first when the client is done)."""
        if delete_queue and self._rep is not None:
            try:
                self._rep.channel().queue_delete(self._reply_queue)
            except Exception:  # best effort: an unused queue expires on its own
                pass
        for conn in (self._pub, self._rep):
            if conn is None:
                continue
            try:
                if conn.connected:
                    conn.sock.settimeout(2.0)  # a silent broker must not hold up the reconnect
                conn.close()
            except Exception:
                conn.collect()  # a dead socket cannot say goodbye; just drop it
        self._pub = self._rep = None


def _read_frames(conn: amqp.Connection, poller: select.poll, limit: int = 64) -> None:
    """Read the frames that have arrived (at most ``limit``, so the other connection gets its turn)."""
    for _ in range(limit):
        try:
            conn.blocking_read(timeout=None)  # the socket's own timeout bounds a partial frame
        except TimeoutError:
            return  # half a frame so far: py-amqp keeps it and reads the rest next time
        if not poller.poll(0) and not _buffered(conn):
            return


def _buffered(conn: amqp.Connection) -> bool:
    # TLS can hold decrypted bytes that select() does not see on the socket.
    pending = getattr(conn.sock, "pending", None)
    return bool(pending is not None and pending() > 0)


def new_reply_queue(prefix: str) -> str:
    """A fresh reply queue name under the agent's ``prefix``."""
    return f"{prefix}{uuid.uuid4().hex[:16]}"
