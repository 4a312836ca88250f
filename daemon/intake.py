"""Intake: turn an AMQP delivery into an accepted envelope or a rejection.

Checks run cheapest first: size, properties, identity, JSON, envelope,
syscall name, arguments, authorization. Every failure is a :class:`Rejected`
carrying the protocol code and a human reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from aiosd.sdk.errors import ProtocolError
from aiosd.sdk.protocol import (
    MAX_MESSAGE_ID_LENGTH,
    MAX_PRIORITY,
    ErrorCode,
    Request,
    Status,
    decode_request,
    describe_validation,
    utcnow,
)
from aiosd.sdk.syscalls import CATALOGUE

from .records import Envelope

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Delivery:
    """An AMQP message as intake sees it, with thread-safe ways to settle it.

    ``ack``/``nack``/``dead_letter`` are bound to the channel the message came
    from, so a message is never settled on a later connection.
    """

    body: bytes
    ack: Callable[[], None]
    nack: Callable[[bool], None]
    dead_letter: Callable[[str, str], None]
    message_id: str | None
    correlation_id: str | None
    reply_to: str | None
    priority: int | None
    user_id: str | None
    routing_key: str = ""
    headers: dict[str, Any] = field(default_factory=dict)
    redelivered: bool = False
    received_at: datetime = field(default_factory=utcnow)


class Rejected(Exception):
    """A delivery that will not be accepted, and why.

    Protocol violations are dead-lettered; policy refusals (``dead_letter=False``)
    are only answered and audited.
    """

    def __init__(
        self,
        code: ErrorCode,
        reason: str,
        *,
        agent: str | None = None,
        syscall: str | None = None,
        status: Status = Status.ERROR,
        dead_letter: bool = True,
    ) -> None:
        super().__init__(reason)
        self.dead_letter = dead_letter
        self.code = code
        self.reason = reason
        self.agent = agent
        self.syscall = syscall
        self.status = status


class Authorizer(Protocol):
    """Decides whether ``agent`` may make ``request``; raises :class:`Rejected` if not."""

    def authorize(self, agent: str, request: Request, args: BaseModel) -> None: ...


class OwnDataAuthorizer:
    """Allows every catalogued syscall; services scope each call to the caller's own data."""

    def authorize(self, agent: str, request: Request, args: BaseModel) -> None:
        """Allow."""


@dataclass(frozen=True)
class Accepted:
    """A delivery that passed intake."""

    envelope: Envelope
    args: BaseModel


class Intake:
    """Validates deliveries against the protocol, the catalogue and the authorizer."""

    def __init__(self, *, max_body_bytes: int, allow_anonymous: bool, authorizer: Authorizer) -> None:
        self._max_body = max_body_bytes
        self._allow_anonymous = allow_anonymous
        self._authorizer = authorizer

    def admit(self, d: Delivery) -> Accepted:
        """Return the accepted envelope or raise :class:`Rejected`."""
        agent = self._identity(d)
        if len(d.body) > self._max_body:
            raise Rejected(ErrorCode.TOO_LARGE, f"body is {len(d.body)} bytes; the limit is {self._max_body}", agent=agent)
        message_id = _message_id(d, agent)
        try:
            request = decode_request(d.body)
        except ProtocolError as exc:
            raise Rejected(exc.code, exc.message, agent=agent) from exc
        spec = CATALOGUE.get(request.syscall)
        if spec is None:
            raise Rejected(ErrorCode.UNKNOWN_SYSCALL, f"unknown syscall {request.syscall!r}", agent=agent, syscall=request.syscall)
        try:
            args = spec.args.model_validate(request.args)
        except ValidationError as exc:
            raise Rejected(
                ErrorCode.INVALID_ARGS, f"invalid arguments for {request.syscall}: {describe_validation(exc)}",
                agent=agent, syscall=request.syscall,
            ) from exc
        self._authorizer.authorize(agent, request, args)
        priority = min(max(d.priority or 0, 0), MAX_PRIORITY)
        envelope = Envelope(
            agent=agent,
            message_id=message_id,
            request=request,
            priority=priority,
            reply_to=d.reply_to or None,
            correlation_id=d.correlation_id or message_id,
            received_at=d.received_at,
        )
        return Accepted(envelope, args)

    def _identity(self, d: Delivery) -> str:
        if d.user_id:
            return d.user_id
        if self._allow_anonymous:
            return ANONYMOUS
        raise Rejected(
            ErrorCode.UNAUTHENTICATED,
            "message has no user_id property; set it to your broker user name",
            status=Status.DENIED,
        )


def _message_id(d: Delivery, agent: str) -> str:
    if not d.message_id:
        raise Rejected(ErrorCode.INVALID_REQUEST, "message has no message_id property (the idempotency key)", agent=agent)
    if len(d.message_id) > MAX_MESSAGE_ID_LENGTH or "/" in d.message_id:
        raise Rejected(
            ErrorCode.INVALID_REQUEST,
            f"message_id must be 1-{MAX_MESSAGE_ID_LENGTH} characters without '/'",
            agent=agent,
        )
    return d.message_id
