"""Intake: turn an AMQP delivery into an accepted envelope or a rejection.

Checks run cheapest first: size, properties, identity, JSON, envelope,
syscall name, arguments, authorization. Every failure is a :class:`Rejected`
carrying the protocol code and a human reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from aiosd.daemon.access.authorizer import Admission, Ask, Refused
from aiosd.daemon.errors import DaemonError
from aiosd.daemon.pipeline.records import Envelope
from aiosd.daemon.services.tasks.leases import BindingRefused, TaskLeases
from aiosd.daemon.transport.delivery import Delivery
from aiosd.daemon.transport.properties import UNDECODABLE_HEADER
from aiosd.sdk.errors import ProtocolError
from aiosd.sdk.protocol import (
    CONTENT_TYPE,
    MAX_MESSAGE_ID_LENGTH,
    MAX_PRIORITY,
    PROTOCOL_VERSION,
    VERSION_HEADER,
    ErrorCode,
    Request,
    Status,
    decode_request,
    describe_validation,
    reply_queue_prefix,
)
from aiosd.sdk.syscalls import CATALOGUE
from aiosd.sdk.tasks import TaskBinding

ANONYMOUS = "anonymous"


class Rejected(DaemonError):
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
        resource: str | None = None,
        sender: str | None = None,
    ) -> None:
        super().__init__(reason)
        #: Who published the message (a runner acting for ``agent``); replies go to the sender's queues.
        self.sender = sender if sender is not None else agent
        self.resource = resource
        self.dead_letter = dead_letter
        self.code = code
        self.reason = reason
        self.agent = agent
        self.syscall = syscall
        self.status = status


class Authorizer(Protocol):
    """Decides a batch of calls: an :class:`Admission` or a :class:`Refused` for each, in order.

    ``Ask.priority`` is the requested one (0-9); the admission may lower it.
    """

    def authorize_many(self, asks: list[Ask]) -> list[Admission | Refused]: ...


class OwnDataAuthorizer:
    """Allows every catalogued syscall; services scope each call to the caller's own data."""

    def authorize_many(self, asks: list[Ask]) -> list[Admission | Refused]:
        """Allow."""
        return [Admission(ask.priority) for ask in asks]


@dataclass(frozen=True)
class Accepted:
    """A delivery that passed intake."""

    envelope: Envelope
    args: BaseModel
    needs_approval: bool = False


#: A further check of one syscall's validated arguments: why they are invalid, or ``None``.
ArgsCheck = Callable[[BaseModel], str | None]


class Intake:
    """Validates deliveries against the protocol, the catalogue and the authorizer.

    ``checks`` adds argument checks the catalogue's models cannot express
    (``tool.call``: the named tool exists and its arguments match its schema).
    """

    def __init__(
        self,
        *,
        max_body_bytes: int,
        allow_anonymous: bool,
        authorizer: Authorizer,
        checks: dict[str, ArgsCheck] | None = None,
        leases: TaskLeases | None = None,
    ) -> None:
        self._leases = leases
        self._max_body = max_body_bytes
        self._allow_anonymous = allow_anonymous
        self._authorizer = authorizer
        self._checks = checks or {}

    def admit(self, d: Delivery) -> Accepted:
        """Return the accepted envelope or raise :class:`Rejected`."""
        verdict = self.admit_many([d])[0]
        if isinstance(verdict, Rejected):
            raise verdict
        return verdict

    def admit_many(self, batch: list[Delivery]) -> list[Accepted | Rejected]:
        """Check a batch against the protocol and the catalogue, then authorize it in one go."""
        verdicts: list[Accepted | Rejected | None] = []
        checked: list[tuple[int, Delivery, Ask, str]] = []
        for d in batch:
            try:
                ask, message_id = self._check(d)
            except Rejected as rej:
                if d.user_id:  # a runner's call for a task is answered on the runner's queues
                    rej.sender = d.user_id
                verdicts.append(rej)
                continue
            checked.append((len(verdicts), d, ask, message_id))
            verdicts.append(None)  # decided by the authorizer, below
        admissions = self._authorizer.authorize_many([ask for _, _, ask, _ in checked]) if checked else []
        for (i, d, ask, message_id), admission in zip(checked, admissions, strict=True):
            verdicts[i] = _accepted(d, ask, message_id, admission)
        return [v for v in verdicts if v is not None]

    def _check(self, d: Delivery) -> tuple[Ask, str]:
        """Everything but authorization: identity, size, properties, JSON, envelope, arguments."""
        if (broken := d.headers.get(UNDECODABLE_HEADER)) is not None:
            raise Rejected(ErrorCode.MALFORMED, f"the message's AMQP properties could not be decoded: {broken}")
        agent = self._identity(d)
        if len(d.body) > self._max_body:
            raise Rejected(
                ErrorCode.TOO_LARGE, f"body is {len(d.body)} bytes; the limit is {self._max_body}", agent=agent
            )
        message_id = _message_id(d, agent)
        _check_envelope(d, agent)
        if d.reply_to and not reply_allowed(agent, d.reply_to):
            raise Rejected(
                ErrorCode.INVALID_REQUEST,
                f"reply_to must be one of your own reply queues ({reply_queue_prefix(agent)}*)",
                agent=agent,
            )
        try:
            request = decode_request(d.body)
        except ProtocolError as exc:
            raise Rejected(exc.code, exc.message, agent=agent) from exc
        if d.routing_key and d.routing_key != request.syscall:
            raise Rejected(
                ErrorCode.INVALID_REQUEST,
                f"routing key {d.routing_key!r} does not match the body's syscall {request.syscall!r}",
                agent=agent,
                syscall=request.syscall,
            )
        if request.task is not None:
            agent, request = self._bind(agent, request)
        spec = CATALOGUE.get(request.syscall)
        if spec is None:
            raise Rejected(
                ErrorCode.UNKNOWN_SYSCALL, f"unknown syscall {request.syscall!r}", agent=agent, syscall=request.syscall
            )
        try:
            args = spec.args.model_validate(request.args)
        except ValidationError as exc:
            raise Rejected(
                ErrorCode.INVALID_ARGS,
                f"invalid arguments for {request.syscall}: {describe_validation(exc)}",
                agent=agent,
                syscall=request.syscall,
            ) from exc
        if (bad := unstorable_key(request.args)) is not None:
            raise Rejected(
                ErrorCode.INVALID_ARGS,
                f"invalid arguments for {request.syscall}: key {bad!r} may not start with '$' or contain '.' or NUL",
                agent=agent,
                syscall=request.syscall,
            )
        check = self._checks.get(request.syscall)
        if check is not None and (problem := check(args)) is not None:
            raise Rejected(
                ErrorCode.INVALID_ARGS,
                f"invalid arguments for {request.syscall}: {problem}",
                agent=agent,
                syscall=request.syscall,
            )
        priority = min(max(d.priority or 0, 0), MAX_PRIORITY)
        if request.task is not None:
            priority = min(priority, self._task_priority(request.task))
        return Ask(agent, request, args, priority), message_id

    def _bind(self, sender: str, request: Request) -> tuple[str, Request]:
        """A runner's call for a task: it runs as the task's agent, under the task's program id."""
        assert request.task is not None
        try:
            if self._leases is None:
                raise BindingRefused("this scheduler runs no tasks")
            lease = self._leases.bind(sender, request.task)
        except BindingRefused as exc:
            raise Rejected(
                ErrorCode.DENIED,
                str(exc),
                agent=sender,
                syscall=request.syscall,
                status=Status.DENIED,
                dead_letter=False,
            ) from exc
        return lease.agent, request.model_copy(update={"program": lease.task})

    def _task_priority(self, binding: TaskBinding) -> int:
        lease = self._leases.get(binding.id) if self._leases is not None else None
        return lease.priority if lease is not None else 0

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


def reply_allowed(agent: str | None, reply_to: str | None) -> bool:
    """Whether replies may go to ``reply_to``: only the sender's own reply queues.

    Otherwise an agent could make the scheduler write into another agent's
    queue, which the broker forbids the agent to do itself. A sender without
    an identity (no ``user_id``) gets no reply at all: whose queue it names
    cannot be checked. The development-only anonymous agent is not checked.
    """
    if not reply_to or agent is None:
        return False
    if agent == ANONYMOUS:
        return True
    return reply_to.startswith(reply_queue_prefix(agent))


def _check_envelope(d: Delivery, agent: str) -> None:
    """The AMQP properties that say how to read the body: JSON, UTF-8, protocol version 1."""
    if d.content_type and d.content_type.split(";")[0].strip().lower() != CONTENT_TYPE:
        raise Rejected(
            ErrorCode.INVALID_REQUEST, f"content_type must be {CONTENT_TYPE}, not {d.content_type!r}", agent=agent
        )
    if d.content_encoding and d.content_encoding.strip().lower() not in ("utf-8", "utf8"):
        raise Rejected(
            ErrorCode.INVALID_REQUEST, f"content_encoding must be utf-8, not {d.content_encoding!r}", agent=agent
        )
    version = d.headers.get(VERSION_HEADER)
    if version is not None and version != PROTOCOL_VERSION:
        raise Rejected(
            ErrorCode.UNSUPPORTED_VERSION,
            f"header {VERSION_HEADER}={version!r} is not supported (this server speaks {PROTOCOL_VERSION})",
            agent=agent,
        )


def _message_id(d: Delivery, agent: str) -> str:
    if not d.message_id:
        raise Rejected(
            ErrorCode.INVALID_REQUEST, "message has no message_id property (the idempotency key)", agent=agent
        )
    if len(d.message_id) > MAX_MESSAGE_ID_LENGTH or "/" in d.message_id:
        raise Rejected(
            ErrorCode.INVALID_REQUEST,
            f"message_id must be 1-{MAX_MESSAGE_ID_LENGTH} characters without '/'",
            agent=agent,
        )
    return d.message_id


def unstorable_key(value: Any, path: str = "args") -> str | None:
    """The path of the first object key MongoDB-compatible servers cannot store, if any."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}"
            if not isinstance(key, str) or key.startswith("$") or "." in key or "\x00" in key:
                return where
            if (bad := unstorable_key(item, where)) is not None:
                return bad
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (bad := unstorable_key(item, f"{path}[{index}]")) is not None:
                return bad
    return None


def _accepted(d: Delivery, ask: Ask, message_id: str, verdict: Admission | Refused) -> Accepted | Rejected:
    if isinstance(verdict, Refused):
        return Rejected(
            verdict.code,
            verdict.reason,
            agent=ask.agent,
            syscall=ask.request.syscall,
            status=Status.DENIED,
            dead_letter=False,
            resource=verdict.resource,
            sender=d.user_id or ask.agent,
        )
    envelope = Envelope(
        agent=ask.agent,
        message_id=message_id,
        request=ask.request,
        priority=verdict.priority,
        reply_to=d.reply_to or None,
        correlation_id=d.correlation_id or message_id,
        received_at=d.received_at,
    )
    return Accepted(envelope, ask.args, verdict.needs_approval)
