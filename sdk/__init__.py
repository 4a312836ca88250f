"""aiosd SDK: the wire protocol and Python clients (sync and asyncio) for agents."""

from .aio import AsyncClient
from .client import Client
from .errors import AiosdError, CallError, CallTimeout, ConnectionFailed, ProtocolError
from .protocol import PROTOCOL_VERSION, ErrorCode, Reply, Request, Status

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
