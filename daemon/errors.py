"""The daemon's errors: every one derives from :class:`~aiosd.sdk.errors.AiosdError`.

The errors every process shares (configuration, unreachable services) and
the exit codes live in :mod:`aiosd.sdk.errors`.
"""

from __future__ import annotations

from aiosd.sdk.errors import AiosdError, ServiceUnavailable
from aiosd.sdk.protocol import ErrorCode


class DaemonError(AiosdError):
    """Base of every error raised inside the daemon."""


class SyscallFailed(DaemonError):
    """A syscall cannot be served; carries the protocol error code for the reply."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFound(SyscallFailed):
    """The named object does not exist (or is not visible to the caller)."""

    code = ErrorCode.NOT_FOUND


class Denied(SyscallFailed):
    """The caller's policy does not allow this."""

    code = ErrorCode.DENIED


class QuotaExceeded(Denied):
    """A memory or storage quota of the caller's policy is used up."""

    code = ErrorCode.QUOTA_EXCEEDED


class AccessError(DaemonError):
    """An agent, policy or approval operation cannot be done (bad input or state)."""


class InvalidPolicy(AccessError):
    """A policy document or agent name does not validate."""


class AgentNotFound(AccessError):
    """No agent of that name is registered."""


class AgentExists(AccessError):
    """An agent (or broker user) of that name already exists."""


class BrokerAdminError(ServiceUnavailable):
    """RabbitMQ's management API failed or refused a request."""


class AuditError(DaemonError):
    """The audit log cannot be read or verified (not: the chain is broken)."""
