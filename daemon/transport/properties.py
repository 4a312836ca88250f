"""AMQP properties that always decode: a hostile header table cannot stop the scheduler.

pika decodes a message's properties inside its frame reader, before any of
our code sees the message. A header table it cannot decode (a timestamp
beyond what ``datetime`` holds, a table nested hundreds deep) would raise out
of the connection's I/O loop, and the message would stay at the head of the
queue, so every restart would die on it again. :class:`TolerantProperties`
replaces pika's ``BasicProperties`` for this process: a table that fails to
decode leaves the properties empty but for one header naming the problem,
and intake refuses such a message as ``malformed`` (dead-lettered, audited).
"""

from __future__ import annotations

from typing import Any

import pika.spec

#: Header set on properties that could not be decoded; its value says why.
UNDECODABLE_HEADER = "x-aiosd-undecodable-properties"


class TolerantProperties(pika.spec.BasicProperties):  # type: ignore[misc]
    """``BasicProperties`` whose decoding never raises."""

    def decode(self, encoded: bytes, offset: int = 0) -> Any:
        """Decode as pika does; on failure keep only the marker header."""
        try:
            return super().decode(encoded, offset)
        except Exception as exc:  # whatever a hostile table makes pika raise
            self.__init__()  # type: ignore[misc]
            self.headers = {UNDECODABLE_HEADER: f"{type(exc).__name__}: {str(exc)[:200]}"}
            return self


def install() -> None:
    """Make pika decode every ``basic`` content header of this process with :class:`TolerantProperties`."""
    pika.spec.props[pika.spec.Basic.INDEX] = TolerantProperties
