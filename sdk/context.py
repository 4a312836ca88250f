"""Arguments and results of the ``context.*`` syscalls: conversation sessions.

A session is a stored chat history. ``llm.chat`` sent with the request
envelope's ``session`` field uses it: the stored history is put before the
call's own messages, and the call's messages plus the assistant's answer are
appended when it completes, so an agent sends only the new turn.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .llm import ChatMessage

SESSION_ID = r"^[A-Za-z0-9_.:-]{1,128}$"


class _Args(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True)


class ContextCreateArgs(_Args):
    """``context.create``: start a session, optionally with opening messages (e.g. a system prompt)."""

    session: str | None = Field(default=None, pattern=SESSION_ID, description="Id to use; generated if null.")
    messages: list[ChatMessage] = Field(default_factory=list, max_length=512)
    metadata: dict[str, Any] = Field(default_factory=dict)


class ContextRef(_Args):
    """``context.get`` / ``context.delete``: name a session."""

    session: str = Field(pattern=SESSION_ID)


class ContextAppendArgs(_Args):
    """``context.append``: add messages at the end of a session."""

    session: str = Field(pattern=SESSION_ID)
    messages: list[ChatMessage] = Field(min_length=1, max_length=512)


class ContextForkArgs(_Args):
    """``context.fork``: copy a session into a new, independent one."""

    session: str = Field(pattern=SESSION_ID)
    new_session: str | None = Field(default=None, pattern=SESSION_ID, description="Id of the copy; generated if null.")


class ContextListArgs(_Args):
    """``context.list``: the caller's sessions, most recently updated first."""

    limit: int = Field(default=50, ge=1, le=500)


class SessionInfo(_Result):
    """A session without its messages."""

    session: str
    length: int = Field(description="Number of messages.")
    created_at: datetime
    updated_at: datetime
    forked_from: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Session(SessionInfo):
    """``context.get`` result: the session with its messages, oldest first."""

    messages: list[dict[str, Any]]


class SessionList(_Result):
    """``context.list`` result."""

    sessions: list[SessionInfo]
