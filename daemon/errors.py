"""The daemon's error tree and process exit codes."""

from __future__ import annotations

from aiosd.sdk.errors import AiosdError
from aiosd.sdk.protocol import ErrorCode

# Exit codes follow sysexits.h so systemd units can tell them apart
# (RestartPreventExitStatus=78: restarting cannot fix a bad configuration).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_UNAVAILABLE = 69
EXIT_CONFIG = 78


class DaemonError(AiosdError):
    """Base of every error raised inside the daemon."""


class ConfigError(DaemonError):
    """The settings are invalid; the process exits with :data:`EXIT_CONFIG`."""


class ServiceUnavailable(DaemonError):
    """RabbitMQ or MongoDB cannot be reached; exits with :data:`EXIT_UNAVAILABLE`."""


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
