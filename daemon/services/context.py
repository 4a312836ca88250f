"""What a kernel service knows about the syscall it is serving."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CallContext:
    """The broker-proven caller and the ids of the syscall being served."""

    agent: str
    call_id: str
    syscall: str
    session: str | None = None
    program: str | None = None
