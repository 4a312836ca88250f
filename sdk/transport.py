"""The AMQP side of the SDK: publish requests, correlate replies, survive lost connections.

A :class:`Transport` runs one I/O thread that owns the client's connections
(see :mod:`.session`). Callers on any thread hand it requests through a queue
and wait on futures; the I/O thread writes them pipelined on a confirm-mode
channel, resolves replies as they arrive and keeps heartbeats flowing.

When a connection is lost the thread reconnects with backoff, re-declares the
reply queue and settles every call still in flight:

* a request the broker may not hold (written, not confirmed) is published
  again with the same ``message_id`` -- the idempotency key, so the scheduler
  runs it once and answers a duplicate of a finished call with its stored reply;
* a request the broker confirmed has its reply fetched by id
  (``syscall.result``), since the reply may have been sent while the client
  was away. A call still running is not an error: its reply follows.
"""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import amqp
import kombu

from .errors import ConnectionFailed, ProtocolError
from .inflight import InFlight, Outgoing
from .protocol import MAX_PRIORITY, Reply, Request, Status, decode_reply, encode, reply_queue_prefix
from .session import PublishRefused, Session, heartbeat_of, new_reply_queue
from .syscalls import ResultArgs, StoredResult

log = logging.getLogger("aiosd.sdk")

_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 5.0
# Requests written per turn of the I/O loop before it reads again, so acks and
# replies keep flowing (and heartbeats keep ticking) under a flood of calls.
_WRITE_BATCH = 256


@dataclass(frozen=True)
class ConnectionStats:
    """What the client's connection went through since it started."""

    reconnects: int  # sessions opened after a lost one
    republished: int  # requests published again because their confirm was lost
    recovered: int  # calls completed from their stored result after a reconnect


class Transport:
    """Publishes syscalls for one agent and hands back their replies as futures."""

    def __init__(self, url: str, *, connect_timeout: float = 10.0, heartbeat: int | None = None) -> None:
        self.url = url
        self._connect_timeout = connect_timeout
        self._heartbeat = heartbeat_of(url) if heartbeat is None else heartbeat
        self.agent: str = kombu.Connection(url).userid or "guest"
        self.reply_queue = new_reply_queue(reply_queue_prefix(self.agent))
        self._calls = InFlight()
        self._outbox: deque[Outgoing] = deque()
        self._unconfirmed: dict[int, Outgoing] = {}  # delivery tag -> call, this session only
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_armed = False
        self._stop = threading.Event()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._reconnects = self._republished = self._recovered = 0

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Connect and declare the reply queue; raise :class:`ConnectionFailed` on failure."""
        self._thread = threading.Thread(target=self._run, name="aiosd-amqp", daemon=True)
        self._thread.start()
        if not self._started.wait(self._connect_timeout + 5) or self._start_error is not None:
            self.close()
            raise ConnectionFailed(f"cannot connect to {self._safe_url()}: {self._start_error}")

    def close(self) -> None:
        """Stop the I/O thread, close the connections and fail calls still waiting."""
        self._stop.set()
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._calls.fail_all(ConnectionFailed("client closed before the reply arrived"))
        self._wake_r.close()
        self._wake_w.close()

    @property
    def stats(self) -> ConnectionStats:
        """Reconnects and recoveries so far."""
        return ConnectionStats(self._reconnects, self._republished, self._recovered)

    # -- calls (any thread) --------------------------------------------------

    def publish(
        self, request: Request, *, message_id: str | None = None, priority: int = 0, want_reply: bool = True
    ) -> Outgoing:
        """Queue ``request`` for publishing; return its in-flight record.

        ``record.confirmed`` resolves once the broker holds the request;
        ``record.reply`` (when ``want_reply``) with its final reply. Either
        fails with :class:`ConnectionFailed` if the broker refuses it or the
        client closes.
        """
        if not 0 <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be between 0 and {MAX_PRIORITY}")
        if self._stop.is_set():
            raise ConnectionFailed("client is closed")
        call = Outgoing(message_id or uuid.uuid4().hex, request.syscall, encode(request), priority, want_reply)
        self._submit(call)
        return call

    def forget(self, call_id: str) -> None:
        """Stop waiting for ``call_id`` (a late reply is dropped; an unsent request is not sent)."""
        self._calls.forget(call_id)

    def _submit(self, call: Outgoing) -> None:
        self._calls.add(call)
        self._outbox.append(call)
        self._wake()

    def _wake(self) -> None:
        # One byte per sleep is enough; the flag saves a syscall per call under load.
        # Order matters: the request is queued before the flag is read, and the
        # I/O thread clears the flag after reading the wake-up bytes, before it
        # drains the queue.
        if self._wake_armed:
            return
        self._wake_armed = True
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (a wake-up is pending anyway) or closed
            pass

    # -- the I/O thread ------------------------------------------------------

    def _run(self) -> None:
        backoff = _BACKOFF_FIRST
        first = True
        while not self._stop.is_set():
            session = self._new_session()
            try:
                session.open(self.agent)
            except Exception as exc:
                session.close(delete_queue=False)
                if first:
                    self._start_error = exc
                    self._started.set()
                    return
                log.warning("aiosd: reconnect failed (%s); retrying in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            backoff = _BACKOFF_FIRST
            try:
                if first:
                    first = False
                    self._started.set()
                else:
                    self._reconnects += 1
                    log.warning("aiosd: reconnected to %s (reconnect %d)", self._safe_url(), self._reconnects)
                    self._recover(session)
                self._serve(session)
            except Exception as exc:  # connection lost: settle what it held, then reconnect
                if not self._stop.is_set():
                    log.warning("aiosd: connection lost (%s: %s); reconnecting", type(exc).__name__, exc)
                session.close(delete_queue=False)
                self._lost(exc)
                continue
            session.close(delete_queue=True)

    def _new_session(self) -> Session:
        return Session(
            self.url,
            reply_queue=self.reply_queue,
            heartbeat=self._heartbeat,
            connect_timeout=self._connect_timeout,
            on_reply=self._on_reply,
            on_ack=self._on_ack,
            on_nack=self._on_nack,
        )

    def _serve(self, session: Session) -> None:
        while not self._stop.is_set():
            self._flush(session)
            woken = session.pump(0.0 if self._outbox else 1.0, self._wake_r)
            if woken:
                try:
                    self._wake_r.recv(4096)
                except BlockingIOError:
                    pass
                # Only now: a byte sent after this point wakes the next select, and a
                # request queued before it is seen by the next flush.
                self._wake_armed = False

    def _flush(self, session: Session) -> None:
        for _ in range(min(len(self._outbox), _WRITE_BATCH)):
            call = self._outbox.popleft()
            if self._calls.get(call.call_id) is call:  # not forgotten meanwhile
                try:
                    self._write(session, call)
                except BaseException:
                    # The connection died under this write: the call is neither sent nor
                    # confirmed, so recovery would skip it. Back to the front of the line.
                    self._outbox.appendleft(call)
                    raise

    def _write(self, session: Session, call: Outgoing) -> None:
        props: dict[str, Any] = {
            "message_id": call.call_id,
            "correlation_id": call.call_id,
            "user_id": self.agent,
            "priority": call.priority,
        }
        if call.want_reply:
            props["reply_to"] = self.reply_queue
        tag = session.publish(call.routing_key, call.body, props)
        call.sent = True
        self._unconfirmed[tag] = call

    def _lost(self, exc: BaseException) -> None:
        refused = isinstance(exc, PublishRefused)
        for call in self._unconfirmed.values():
            if refused:
                # Every request of this client goes to one exchange as one user, so
                # what the broker refused once it refuses again: fail, do not loop.
                self._calls.fail(call, ConnectionFailed(f"the broker refused the request: {exc}"))
        self._unconfirmed.clear()

    def _recover(self, session: Session) -> None:
        for call in self._calls.snapshot():
            if call.internal:
                self._calls.forget(call.call_id)  # a query of the last session; asked anew below
            elif call.sent:
                self._republished += 1
                self._write(session, call)
            elif call.confirmed.done() and call.want_reply:
                self._ask_stored_result(call)

    def _ask_stored_result(self, call: Outgoing) -> None:
        args = ResultArgs(id=call.call_id).model_dump(mode="json")
        query = Request(syscall="syscall.result", args=args)
        probe = Outgoing(uuid.uuid4().hex, query.syscall, encode(query), call.priority, True, internal=True)
        probe.reply.add_done_callback(lambda fut: self._on_stored(call.call_id, fut))
        self._calls.add(probe)
        self._outbox.append(probe)

    def _on_stored(self, call_id: str, fut: Future[Reply]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        answer = fut.result()
        if answer.status is not Status.OK:
            return  # not_found: still queued at the broker; its reply will come
        stored = StoredResult.model_validate(answer.result)
        if stored.reply is None:
            return  # accepted, still running: its reply will come to the re-declared queue
        reply = Reply.model_validate(stored.reply)
        if reply.status is not Status.PENDING and self._calls.resolve(call_id, reply):
            self._recovered += 1

    # -- broker callbacks (I/O thread) ---------------------------------------

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        for call in self._settled(delivery_tag, multiple):
            self._calls.confirm(call)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        for call in self._settled(delivery_tag, multiple):
            self._calls.fail(call, ConnectionFailed("the broker could not take the request (nack)"))

    def _settled(self, delivery_tag: int, multiple: bool) -> list[Outgoing]:
        if not multiple:
            call = self._unconfirmed.pop(delivery_tag, None)
            return [] if call is None else [call]
        done = []
        while self._unconfirmed:
            tag = next(iter(self._unconfirmed))  # tags grow, and dicts keep insertion order
            if tag > delivery_tag:
                break
            done.append(self._unconfirmed.pop(tag))
        return done

    def _on_reply(self, message: amqp.Message) -> None:
        try:
            reply = decode_reply(message.body)
        except ProtocolError:
            return  # not ours to handle; nothing waits on a reply we cannot read
        if reply.status is Status.PENDING:
            return  # interim (waiting for a human approval): the final reply follows
        self._calls.resolve(message.properties.get("correlation_id") or reply.id, reply)

    def _safe_url(self) -> str:
        return str(kombu.Connection(self.url).as_uri(include_password=False))
