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

#: Properties that must be text.
TEXT_FIELDS = (
    "content_type",
    "content_encoding",
    "correlation_id",
    "reply_to",
    "message_id",
    "type",
    "user_id",
    "app_id",
)
#: Header set on properties that could not be decoded; its value says why.
UNDECODABLE_HEADER = "x-aiosd-undecodable-properties"


class TolerantProperties(pika.spec.BasicProperties):  # type: ignore[misc]
    """``BasicProperties`` whose decoding never raises."""

    def decode(self, encoded: bytes, offset: int = 0) -> Any:
        """Decode as pika does; on failure keep only the marker header."""
        try:
            decoded = super().decode(encoded, offset)
        except Exception as exc:  # whatever a hostile table makes pika raise
            return self._undecodable(f"{type(exc).__name__}: {str(exc)[:200]}")
        # pika hands back a short string that is not UTF-8 as bytes: not text, so not ours to read.
        raw = [name for name in TEXT_FIELDS if isinstance(getattr(self, name, None), bytes)]
        return self._undecodable(f"{', '.join(raw)} not UTF-8 text") if raw else decoded

    def _undecodable(self, why: str) -> Any:
        self.__init__()  # type: ignore[misc]
        self.headers = {UNDECODABLE_HEADER: why}
        return self


def install() -> None:
    """Make pika decode every ``basic`` content header of this process with :class:`TolerantProperties`."""
    pika.spec.props[pika.spec.Basic.INDEX] = TolerantProperties
