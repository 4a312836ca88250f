"""Completing a syscall: commit its reply, audit the outcome, send the reply.

The one way every syscall ends, whoever served it: the pipeline for the
kernel's own syscalls, the leased-work service for worker outcomes, the
approvals job for denials. The first completion wins; a later one for the
same record is dropped.
"""

from __future__ import annotations

from collections.abc import Callable

from aiosd.daemon.access.policy import resource_of
from aiosd.daemon.audit.chain import AuditLog, Decision
from aiosd.daemon.pipeline.records import Envelope, Records
from aiosd.daemon.transport.outbox import Outbox
from aiosd.sdk.protocol import Reply, Status

#: Run a function on the syscall threads.
Submit = Callable[[Callable[[], None]], None]


class Completion:
    """Commits, audits and sends replies."""

    def __init__(self, records: Records, audit: AuditLog, outbox: Outbox, submit: Submit) -> None:
        self._records = records
        self._audit = audit
        self._outbox = outbox
        self._submit = submit

    def finish(self, env: Envelope, reply: Reply) -> None:
        """Commit ``reply`` as the syscall's result, audit it and send it (first completion wins)."""
        if not self._records.complete(env, reply):
            return
        decision = {Status.OK: Decision.COMPLETED, Status.DENIED: Decision.DENIED}.get(reply.status, Decision.FAILED)
        self.record(env, decision, reply.error.code.value if reply.error else None)
        self.send(env, reply)

    def record(self, env: Envelope, decision: Decision, code: str | None = None) -> None:
        """Append one audit record about ``env``."""
        self._audit.record(
            agent=env.agent,
            syscall=env.request.syscall,
            message_id=env.message_id,
            decision=decision,
            code=code,
            resource=resource_of(env.agent, env.request),
        )

    def send(self, env: Envelope, reply: Reply) -> None:
        """Send a committed reply; mark the record replied once the broker confirmed it."""
        key = env.key
        if env.reply_to is None:
            self._records.replied(key)
            return

        def on_sent() -> None:
            self._submit(lambda: self._records.replied(key))

        self._outbox.reply(env.reply_to, env.correlation_id, reply, on_sent)
