"""A bare AMQP agent that follows docs/protocol.md by hand: no aiosd code at all."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pika


class RawAgent:
    """Publishes hand-built JSON requests with pika and reads replies off its own queue."""

    def __init__(self, url: str, user: str = "guest") -> None:
        self.user = user
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()
        self.reply_queue = f"aiosd.reply.{user}.{uuid.uuid4().hex}"
        self.ch.queue_declare(self.reply_queue, exclusive=True)

    def publish(
        self,
        body: bytes,
        *,
        routing_key: str = "memory.add",
        message_id: str | None = None,
        user_id: str | None = "",
        priority: int = 0,
        reply: bool = True,
    ) -> str:
        call_id = message_id or str(uuid.uuid4())
        props = pika.BasicProperties(
            message_id=call_id,
            correlation_id=call_id,
            reply_to=self.reply_queue if reply else None,
            user_id=self.user if user_id == "" else user_id,
            priority=priority,
            content_type="application/json",
            delivery_mode=2,
            headers={"aiosd-protocol": 1},
        )
        self.ch.basic_publish("aiosd.ingress", routing_key, body, props)
        return call_id

    def call(self, syscall: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
        body = json.dumps({"v": 1, "syscall": syscall, "args": args}).encode()
        call_id = self.publish(body, routing_key=syscall, **kw)
        return self.wait(call_id)

    def wait(self, call_id: str, timeout: float = 30.0) -> dict[str, Any]:
        for _method, props, body in self.ch.consume(self.reply_queue, auto_ack=True, inactivity_timeout=timeout):
            if props is None:
                break
            if props.correlation_id == call_id:
                self.ch.cancel()
                assert props.content_type == "application/json"
                return dict(json.loads(body))
        self.ch.cancel()
        raise AssertionError(f"no reply to {call_id} within {timeout}s")

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()
