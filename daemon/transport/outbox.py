"""Where replies and leases go out: the scheduler's current AMQP connection.

The scheduler's connection can be replaced (a reconnect) while syscall
threads hold on to the outbox, so they never see a :class:`~.broker.Broker`
directly. While there is no connection a reply is dropped: the syscall's
record still says it was not sent, and recovery sends it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from aiosd.daemon.transport.broker import Broker
from aiosd.sdk.protocol import Reply


class Outbox(Protocol):
    """What the pipeline asks of the AMQP connection thread (thread-safe)."""

    def reply(self, reply_to: str, correlation_id: str, reply: Reply, on_sent: Callable[[], None]) -> None:
        """Publish ``reply``; call ``on_sent`` once the broker confirmed it."""


class LiveOutbox:
    """An :class:`Outbox` (and the lease publisher) over whichever connection is current."""

    def __init__(self) -> None:
        self._broker: Broker | None = None

    def attach(self, broker: Broker | None) -> None:
        """Use ``broker`` from now on (``None``: no connection)."""
        self._broker = broker

    def reply(self, reply_to: str, correlation_id: str, reply: Reply, on_sent: Callable[[], None]) -> None:
        """Publish a reply on the live connection; dropped (and re-sent by recovery) if none."""
        broker = self._broker
        if broker is not None:
            broker.reply(reply_to, correlation_id, reply, on_sent)

    def publish_task(self, task_id: str, priority: int) -> None:
        """Queue a task for the runners; dropped if there is no connection.

        Only calls not yet acknowledged publish tasks: without a connection their
        acknowledgement fails too, RabbitMQ delivers them again, and they publish again.
        """
        broker = self._broker
        if broker is not None:
            broker.publish_task(task_id, priority)

    def publish_lease(self, worker_id: str, body: bytes) -> None:
        """Send a lease to a worker's queue; dropped if there is no connection (the lease expires)."""
        broker = self._broker
        if broker is not None:
            broker.publish_lease(worker_id, body)
