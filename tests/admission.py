"""Helpers of the admission tests (real database): a scratch database, a clock to turn, calls to admit."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pymongo

from aiosd.daemon.access.authorizer import Ask
from aiosd.sdk.protocol import Request
from aiosd.sdk.syscalls import CATALOGUE

from .harness import MONGO_URL


def scratch_db(prefix: str) -> Iterator[Any]:
    """A database of its own, dropped afterwards (the body of a fixture)."""
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(MONGO_URL)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    yield client[name]
    client.drop_database(name)
    client.close()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def asks(agent: str, n: int = 1) -> list[Ask]:
    """``n`` ``memory.add`` calls of ``agent`` to admit."""
    request = Request(syscall="memory.add", args={"content": "x"})
    args = CATALOGUE["memory.add"].args.model_validate(request.args)
    return [Ask(agent, request, args, 5) for _ in range(n)]
