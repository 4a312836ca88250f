"""The life of a syscall inside the scheduler, run on the worker threads.

admit -> persist (idempotent on message_id) -> audit -> ack -> serve ->
store the reply -> publish it -> mark it replied. Once the record is written
MongoDB owns the syscall: a crash anywhere after that is repaired by
:meth:`Pipeline.recover`, which finishes accepted records and re-sends replies
that may not have left. A call whose policy requires a human approval is
parked by the :class:`Gate` after the ack instead of served; the approvals
job runs (or denies) it once decided. A leased syscall (LLM or tool call) is
handed to :mod:`aiosd.daemon.leasing` after the ack and comes back through
:class:`Completion`, the one way every syscall ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import structlog
from pydantic import BaseModel
from pymongo.errors import ConnectionFailure, PyMongoError

from aiosd.daemon.access.policy import resource_of
from aiosd.daemon.audit.chain import AuditLog, Decision
from aiosd.daemon.errors import Denied, SyscallFailed
from aiosd.daemon.pipeline.intake import Intake, Rejected, reply_allowed
from aiosd.daemon.pipeline.kernel import Kernel
from aiosd.daemon.pipeline.records import Envelope, Records, elapsed_ms, envelope_from_record
from aiosd.daemon.services.context import CallContext
from aiosd.daemon.store import Doc
from aiosd.daemon.transport.delivery import Delivery
from aiosd.daemon.transport.outbox import Outbox
from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.protocol import ErrorCode, Reply, Status, Timings, utcnow
from aiosd.sdk.syscalls import CATALOGUE, is_leased

log = get_logger(__name__)

#: Database errors worth retrying: the server is unreachable, timing out or failing
#: over (ConnectionFailure covers server selection and network timeouts).
TRANSIENT = (ConnectionFailure,)

#: Pause before handing a delivery back when MongoDB is failing, so a broken
#: database does not turn into a hot redelivery loop.
RETRY_PAUSE = 1.0


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


class Leasing(Protocol):
    """Takes the syscalls that workers or tool runners serve (see :mod:`aiosd.daemon.leasing`)."""

    def submit(self, env: Envelope) -> None:
        """Queue an accepted syscall for a worker."""


class Gate(Protocol):
    """Holds syscalls that need a human approval (see :mod:`.approvals`)."""

    def park(self, env: Envelope) -> None: ...

    def hold(self, doc: Doc) -> bool: ...


class Pipeline:
    """Serves deliveries and recovers unfinished syscalls."""

    def __init__(
        self,
        intake: Intake,
        records: Records,
        audit: AuditLog,
        kernel: Kernel,
        completion: Completion,
        outbox: Outbox,
        leasing: Leasing,
        gate: Gate | None = None,
    ) -> None:
        self._intake = intake
        self._records = records
        self._audit = audit
        self._kernel = kernel
        self._completion = completion
        self._outbox = outbox
        self._leasing = leasing
        self._gate = gate
        self._running: set[str] = set()
        self._running_lock = threading.Lock()

    # -- deliveries ------------------------------------------------------------

    def handle(self, d: Delivery) -> None:
        """Take one delivery from intake to reply. Never raises.

        Before the ack, a failure hands the message back (transient database
        trouble) or refuses it (anything else: retrying cannot help). After
        the ack MongoDB owns the syscall, so a failure only leaves the record
        for the recovery sweep; the message is never settled twice.
        """
        with structlog.contextvars.bound_contextvars(message_id=d.message_id, agent=d.user_id):
            self._handle(d)

    def _handle(self, d: Delivery) -> None:
        try:
            work = self._take(d)
        except TRANSIENT as exc:
            log.error("store_unavailable", message_id=d.message_id, error=str(exc))
            time.sleep(RETRY_PAUSE)
            d.nack(True)
            return
        except Exception as exc:  # a message the store refuses is poison: never retry it
            log.exception("delivery_refused", message_id=d.message_id)
            self._refuse(d, f"the request could not be stored: {type(exc).__name__}: {exc}")
            return
        if work is None:
            return
        try:
            work()
        except Exception:
            log.exception("syscall_deferred_to_sweep", message_id=d.message_id)

    def _take(self, d: Delivery) -> Callable[[], None] | None:
        """Admit and persist ``d``, then ack it; return the work left to do after the ack."""
        try:
            accepted = self._intake.admit(d)
        except Rejected as rej:
            self._reject(d, rej)
            return None
        env = accepted.envelope
        created, doc = self._records.insert(env)
        if created:
            self._completion.record(env, Decision.ACCEPTED)
        d.ack()
        if created and accepted.needs_approval and self._gate is not None:
            gate = self._gate
            return lambda: gate.park(env)
        if created:
            return lambda: self.execute(env, accepted.args)
        if doc.get("reply"):
            # A re-published or redelivered duplicate: answer again, never re-run.
            log.info("duplicate_answered", message_id=env.message_id, agent=env.agent)
            reply = Reply.model_validate(doc["reply"])
            return lambda: self._completion.send(env, reply)
        log.info("duplicate_in_progress", message_id=env.message_id, agent=env.agent)
        return None

    def _refuse(self, d: Delivery, reason: str) -> None:
        try:
            self._reject(d, Rejected(ErrorCode.INVALID_ARGS, reason))
        except Exception:
            log.exception("refuse_failed", message_id=d.message_id)
            d.dead_letter(ErrorCode.INVALID_ARGS.value, reason)

    def _reject(self, d: Delivery, rej: Rejected) -> None:
        log.warning("rejected", message_id=d.message_id, agent=rej.agent, code=rej.code.value, reason=rej.reason)
        decision = Decision.DENIED if rej.status == Status.DENIED else Decision.REJECTED
        self._audit.record(
            agent=rej.agent, syscall=rej.syscall, message_id=d.message_id,
            decision=decision, code=rej.code.value, reason=rej.reason, resource=rej.resource,
        )
        if d.reply_to and reply_allowed(rej.agent, d.reply_to):
            reply = Reply.failure(d.message_id or "", rej.syscall, rej.code, rej.reason, status=rej.status)
            self._outbox.reply(d.reply_to, d.correlation_id or d.message_id or "", reply, _noop)
        if rej.dead_letter:
            d.dead_letter(rej.code.value, rej.reason)
        else:
            d.ack()

    # -- serving ---------------------------------------------------------------

    def execute(self, env: Envelope, args: BaseModel) -> None:
        """Serve an accepted syscall (or hand it to a worker queue) and answer it."""
        if not self._claim(env.key):
            return
        try:
            if is_leased(env.request.syscall) and not _past_deadline(env):
                self._leasing.submit(env)
                return
            self._completion.finish(env, self._serve(env, args))
        finally:
            self._release(env.key)

    def _serve(self, env: Envelope, args: BaseModel) -> Reply:
        req = env.request
        started = utcnow()
        if req.deadline is not None and _past_deadline(env):
            return Reply.failure(env.message_id, req.syscall, ErrorCode.DEADLINE_EXCEEDED, f"deadline {req.deadline.isoformat()} passed before the call started")
        ctx = CallContext(agent=env.agent, call_id=env.message_id, syscall=req.syscall, session=req.session, program=req.program)
        try:
            result = self._kernel.run(ctx, args)
        except SyscallFailed as exc:
            status = Status.DENIED if isinstance(exc, Denied) else Status.ERROR
            return Reply.failure(env.message_id, req.syscall, exc.code, exc.message, status=status)
        except PyMongoError:
            raise  # infrastructure, not the caller's fault: leave it accepted for the sweep
        except Exception as exc:
            log.exception("syscall_crashed", message_id=env.message_id, syscall=req.syscall)
            return Reply.failure(env.message_id, req.syscall, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")
        timings = Timings(queue_ms=round(elapsed_ms(env.received_at, started), 3), run_ms=round(elapsed_ms(started), 3))
        return Reply.ok(env.message_id, req.syscall, result.model_dump(mode="json"), timings=timings)

    # -- recovery --------------------------------------------------------------

    def recover(self, older_than: float = 0.0) -> int:
        """Finish accepted syscalls and re-send replies that may not have left; return how many."""
        count = 0
        for doc in self._records.live(older_than):
            env = envelope_from_record(doc)
            done = self._records.result(env.key)
            if done is not None:
                self._completion.send(env, Reply.model_validate(done["reply"]))
            elif doc["state"] == "accepted":
                # A call that needs approval may have been stored but not parked before a crash.
                if self._gate is None or not self._gate.hold(doc):
                    self.execute(env, _args_of(env))
            else:
                continue  # queued or leased: the dispatcher owns it
            count += 1
        return count

    def _claim(self, key: str) -> bool:
        with self._running_lock:
            if key in self._running:
                return False
            self._running.add(key)
            return True

    def _release(self, key: str) -> None:
        with self._running_lock:
            self._running.discard(key)


def _past_deadline(env: Envelope) -> bool:
    return env.request.deadline is not None and utcnow() > env.request.deadline


def _args_of(env: Envelope) -> BaseModel:
    return CATALOGUE[env.request.syscall].args.model_validate(env.request.args)


def _noop() -> None:
    pass
