"""Errors raised by the aiosd SDK, rooted at :class:`AiosdError`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .protocol import ErrorCode, Reply


class AiosdError(Exception):
    """Base class of every error aiosd raises."""


# Process exit codes of every aiosd command follow sysexits.h so systemd units can tell them apart
# (RestartPreventExitStatus=78: restarting cannot fix a bad configuration).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_UNAVAILABLE = 69
EXIT_CONFIG = 78


class ConfigError(AiosdError):
    """The settings are invalid; a process exits with :data:`EXIT_CONFIG`."""


class ServiceUnavailable(AiosdError):
    """RabbitMQ or MongoDB cannot be reached; a process exits with :data:`EXIT_UNAVAILABLE`."""


class ProtocolError(AiosdError):
    """A message does not follow the wire protocol."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ConnectionFailed(AiosdError):
    """The broker could not be reached or the connection was lost."""


class CallError(AiosdError):
    """A syscall finished with a status other than ``ok``.

    ``code`` is the protocol's :class:`~aiosd.sdk.protocol.ErrorCode` value,
    ``reply`` the full reply when there is one.
    """

    def __init__(self, code: str, message: str, reply: Reply | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.reply = reply


class CallTimeout(CallError):
    """No reply arrived in time. The call may still complete: fetch it by id later."""

    def __init__(self, call_id: str, timeout: float) -> None:
        super().__init__("timeout", f"no reply to {call_id} within {timeout:g}s")
        self.call_id = call_id
