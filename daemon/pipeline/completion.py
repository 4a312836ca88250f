"""Completing syscalls: commit their replies, audit the outcomes, send the replies.

The one way every syscall ends, whoever served it: the pipeline for the
kernel's own syscalls, the leased-work service for worker outcomes, the
approvals job for denials. A batch is committed with one write to
``results`` and one audit append; the first completion of a record wins and
a later one is dropped. Once the broker has a reply, its live record is
retired — in batches too: a retired record only matters to recovery, which
would re-send a reply that already left (harmless: replies carry their id).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from aiosd.daemon.access.policy import resource_of
from aiosd.daemon.audit.chain import AuditLog, Decision, Entry
from aiosd.daemon.pipeline.records import Envelope, Records
from aiosd.daemon.transport.outbox import Outbox
from aiosd.sdk.protocol import Reply, Status

#: Run a function on the syscall threads.
Submit = Callable[[Callable[[], None]], None]

#: Live records retired with one delete once this many replies are out (the periodic job takes the rest).
RETIRE_BATCH = 128


class Completion:
    """Commits, audits and sends replies; retires live records in batches."""

    def __init__(self, records: Records, audit: AuditLog, outbox: Outbox, submit: Submit) -> None:
        self._records = records
        self._audit = audit
        self._outbox = outbox
        self._submit = submit
        self._sent: list[str] = []
        self._sent_lock = threading.Lock()

    def finish(self, env: Envelope, reply: Reply) -> None:
        """Commit ``reply`` as the syscall's result, audit it and send it (first completion wins)."""
        self.finish_many([(env, reply)])

    def finish_many(self, finished: list[tuple[Envelope, Reply]]) -> None:
        """Commit a batch of replies (one write), audit the winners (one append) and send them."""
        won = self._records.complete_many(finished)
        self._audit.record_many([entry(env, _decision(reply), reply) for env, reply in won])
        for env, reply in won:
            self.send(env, reply)

    def send(self, env: Envelope, reply: Reply) -> None:
        """Send a committed reply; its live record is retired once the broker has it."""
        key = env.key
        if env.reply_to is None:
            self._sent_one(key)
            return
        self._outbox.reply(env.reply_to, env.correlation_id, reply, lambda: self._sent_one(key))

    def _sent_one(self, key: str) -> None:
        with self._sent_lock:
            self._sent.append(key)
            full = len(self._sent) >= RETIRE_BATCH
        if full:
            self._submit(self.retire)

    def retire(self) -> None:
        """Remove the live records of every reply sent so far (one write)."""
        with self._sent_lock:
            keys, self._sent = self._sent, []
        self._records.retire(keys)


def entry(env: Envelope, decision: Decision, reply: Reply | None = None) -> Entry:
    """The audit entry of a decision about an accepted syscall."""
    code = reply.error.code.value if reply is not None and reply.error else None
    return Entry(env.agent, env.request.syscall, env.message_id, decision, code, None, resource_of(env.agent, env.request))


def _decision(reply: Reply) -> Decision:
    return {Status.OK: Decision.COMPLETED, Status.DENIED: Decision.DENIED}.get(reply.status, Decision.FAILED)
