"""aiosd SDK: the wire protocol and Python clients (sync and asyncio) for agents.

The names below are loaded on first use, so a process that needs only a
light part of the SDK (a sandboxed tool imports :mod:`.toolkit`) does not pay
for the AMQP client.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .aio import AsyncClient
    from .client import Client
    from .errors import AiosdError, CallError, CallTimeout, ConnectionFailed, ProtocolError
    from .protocol import PROTOCOL_VERSION, ErrorCode, Reply, Request, Status

_WHERE = {
    "AsyncClient": "aio",
    "Client": "client",
    "AiosdError": "errors",
    "CallError": "errors",
    "CallTimeout": "errors",
    "ConnectionFailed": "errors",
    "ProtocolError": "errors",
    "PROTOCOL_VERSION": "protocol",
    "ErrorCode": "protocol",
    "Reply": "protocol",
    "Request": "protocol",
    "Status": "protocol",
}

__all__ = [
    "PROTOCOL_VERSION",
    "AiosdError",
    "AsyncClient",
    "CallError",
    "CallTimeout",
    "Client",
    "ConnectionFailed",
    "ErrorCode",
    "ProtocolError",
    "Reply",
    "Request",
    "Status",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
