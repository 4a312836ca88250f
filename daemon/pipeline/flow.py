"""The life of a syscall inside the scheduler, run on the syscall threads.

A batch of deliveries (group commit, see :mod:`aiosd.daemon.transport.batcher`):
admit -> persist (one insert, idempotent on message_id) -> audit (one append)
-> ack -> serve -> commit the replies (one write) -> publish them -> retire
the records. Once a record is written MongoDB owns the syscall: a crash
anywhere after that is repaired by :mod:`.recovery`, which finishes accepted
records and re-sends replies that may not have left.

:class:`Completion` is how every syscall ends, whoever served it (the kernel,
a worker, the approvals job): replies are committed in batches (first
completion wins), audited, sent, and their live records retired in batches. A call whose policy requires a human approval is
parked by the :class:`Gate` after the ack instead of served; the approvals
job runs (or denies) it once decided. A leased syscall (LLM or tool call) is
handed to :mod:`aiosd.daemon.leasing` after the ack and comes back through
:class:`Completion`, the one way every syscall ends.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Protocol, TypeVar

from pydantic import BaseModel
from pymongo.errors import ConnectionFailure

from aiosd.daemon.access.policy import resource_of
from aiosd.daemon.audit.chain import AuditLog, Decision, Entry
from aiosd.daemon.errors import Denied, SyscallFailed
from aiosd.daemon.pipeline.intake import Accepted, Intake, Rejected, reply_allowed
from aiosd.daemon.pipeline.kernel import Kernel
from aiosd.daemon.pipeline.poison import PoisonGuard
from aiosd.daemon.pipeline.records import Envelope, Lookup, Records, elapsed_ms, record_key
from aiosd.daemon.services.context import CallContext
from aiosd.daemon.store import Doc
from aiosd.daemon.transport.delivery import Delivery, ack_all
from aiosd.daemon.transport.outbox import Outbox
from aiosd.sdk.process import metrics
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


T = TypeVar("T")
R = TypeVar("R")

#: Run a function on the syscall threads.
Submit = Callable[[Callable[[], None]], None]

#: Live records retired with one delete once this many replies are out (the periodic job takes the rest).
RETIRE_BATCH = 128

#: Syscalls that change an agent's memory quota usage.
MEMORY_WRITES = frozenset({"memory.add", "memory.update", "memory.delete"})

#: Calls remembered as just ended, to tell which look-aheads they made stale.
RELEASES_KEPT = 4096


class Completion:
    """Commits, audits and sends replies; retires live records in batches."""

    def __init__(self, records: Records, audit: AuditLog, outbox: Outbox, submit: Submit) -> None:
        self._records = records
        self._audit = audit
        self._outbox = outbox
        self._submit = submit
        self._sent: list[str] = []
        self._sent_lock = threading.Lock()
        #: Duplicates that arrived while their original ran: (reply_to, correlation_id) by key.
        self._waiting: dict[str, list[tuple[str, str]]] = {}

    def finish(self, env: Envelope, reply: Reply) -> None:
        """Commit ``reply`` as the syscall's result, audit it and send it (first completion wins)."""
        self.finish_many([(env, reply)])

    def finish_many(self, finished: list[tuple[Envelope, Reply]], again: bool = False) -> None:
        """Commit a batch of replies (one write), audit the winners (one append) and send them.

        ``again``: an earlier try of these same replies failed part-way (the
        store went away), so some may be stored already: those are this
        batch's own, audited and sent now, not copies that lost.
        """
        won = self._records.complete_many(finished, again)
        self._audit.record_many([entry(env, _decision(reply), reply) for env, reply in won])
        for env, reply in won:
            _observe(reply)
            self.send(env, reply)

    def finish_unstored(self, finished: list[tuple[Envelope, Reply]]) -> None:
        """Commit, audit and send replies of calls that were never stored live (see :meth:`Pipeline.handle`).

        Their acceptance is audited here, next to the outcome, in the same append.
        """
        won = self._records.complete_many(finished)
        entries: list[Entry] = []
        for env, reply in won:
            entries += [entry(env, Decision.ACCEPTED), entry(env, _decision(reply), reply)]
        self._audit.record_many(entries)
        for env, reply in won:
            _observe(reply)
            self.send(env, reply, live=False)
        if len(won) < len(finished):
            winners = {id(env) for env, _ in won}
            self._send_stored([env for env, _ in finished if id(env) not in winners])

    def _send_stored(self, lost: list[Envelope]) -> None:
        """Copies that ran while another copy (elsewhere) committed first: they get its reply."""
        stored = self._records.results_of([env.key for env in lost])
        for env in lost:
            doc = stored.get(env.key)
            if doc is not None:
                self.answer_copy(env, doc, live=False)

    def answer_copy(self, env: Envelope, doc: Doc, live: bool = True) -> None:
        """A copy of a stored call: answer it with the stored reply, or once the call finishes.

        A task's call replayed after a crash must be the call stored under its
        message id: a program that made a different call diverged (see the
        README, "Durable execution") and is told so instead. ``live``: the
        copy's key may have a live record, retired once the reply is sent.
        """
        if env.request.task is not None and (diverged := _divergence(env, doc)) is not None:
            log.warning("replay_diverged", message_id=env.message_id, agent=env.agent, task=env.request.task.id)
            failure = Reply.failure(env.message_id, env.request.syscall, ErrorCode.REPLAY_DIVERGED, diverged)
            if env.reply_to is not None:
                self._outbox.reply(env.reply_to, env.correlation_id, failure, _noop)
            return
        if doc.get("reply"):
            # A re-published or redelivered duplicate: answer again, never re-run.
            log.info("duplicate_answered", message_id=env.message_id, agent=env.agent)
            self.send(env, Reply.model_validate(doc["reply"]), live)
        else:
            log.info("duplicate_in_progress", message_id=env.message_id, agent=env.agent)
            self.answer_later(env)

    def answer_later(self, duplicate: Envelope) -> None:
        """A duplicate of a call still running: it gets the reply too, once the call finishes."""
        if duplicate.reply_to is None:
            return
        with self._sent_lock:
            self._waiting.setdefault(duplicate.key, []).append((duplicate.reply_to, duplicate.correlation_id))
        done = self._records.result(duplicate.key)  # it may have finished before we listened
        if done is not None:
            self._send_to_waiting(duplicate.key, Reply.model_validate(done["reply"]))

    def _send_to_waiting(self, key: str, reply: Reply) -> None:
        with self._sent_lock:
            waiting = self._waiting.pop(key, [])
        for reply_to, correlation_id in waiting:
            self._outbox.reply(reply_to, correlation_id, reply, _noop)

    def send(self, env: Envelope, reply: Reply, live: bool = True) -> None:
        """Send a committed reply (and to duplicates that waited for it); retire the live record then."""
        key = env.key
        if self._waiting:
            self._send_to_waiting(key, reply)
        on_sent: Callable[[], None] = partial(self._sent_one, key) if live else _noop
        if env.reply_to is None:
            on_sent()
            return
        self._outbox.reply(env.reply_to, env.correlation_id, reply, on_sent)

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


def _observe(reply: Reply) -> None:
    timings = reply.timings
    metrics.observe_reply(reply.syscall or "", reply.status.value, timings.queue_ms, timings.run_ms)


def entry(env: Envelope, decision: Decision, reply: Reply | None = None) -> Entry:
    """The audit entry of a decision about an accepted syscall."""
    code = reply.error.code.value if reply is not None and reply.error else None
    return Entry(
        env.agent, env.request.syscall, env.message_id, decision, code, None, resource_of(env.agent, env.request)
    )


def _decision(reply: Reply) -> Decision:
    return {Status.OK: Decision.COMPLETED, Status.DENIED: Decision.DENIED}.get(reply.status, Decision.FAILED)


class Leasing(Protocol):
    """Takes the syscalls that workers or tool runners serve (see :mod:`aiosd.daemon.leasing`)."""

    def submit(self, env: Envelope) -> None:
        """Queue an accepted syscall for a worker."""

    def ending(self, key: str) -> bool:
        """Whether the call was answered and its reply is on its way: nothing more to do for it here."""


class Gate(Protocol):
    """Holds syscalls that need a human approval (see :mod:`.approvals`)."""

    def park(self, env: Envelope) -> None: ...

    def hold(self, doc: Doc) -> bool: ...


class Pipeline:
    """Serves batches of deliveries; :meth:`execute` serves one accepted syscall (recovery, approvals)."""

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
        recount: Callable[[str], None] | None = None,
    ) -> None:
        self._recount = recount
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
        #: Keys released lately, with the release's number: a look-ahead older than that is stale for them.
        self._released: OrderedDict[str, int] = OrderedDict()
        self._releases = 0
        self._poison = PoisonGuard()

    # -- deliveries ------------------------------------------------------------

    def handle(self, batch: list[Delivery]) -> None:
        """Take a batch of deliveries from intake to reply (group commit). Never raises.

        Before the ack, a transient database failure hands the batch back; any
        other failure splits the batch so that each delivery is tried alone and
        only the one the store refuses is refused. After the ack MongoDB owns
        the syscalls, so a failure only leaves records for the recovery sweep;
        a message is never settled twice.
        """
        work = self._guarded(batch, self._take, self.handle, _itself, "stored")
        if work is None:
            return
        unacked = {id(d) for d in work.unacked}
        self._poison.stored([d for d in batch if id(d) not in unacked])
        try:
            self._run(work)
        except Exception:
            log.exception("syscalls_deferred_to_sweep", syscalls=len(work.new))
        if work.direct:
            self._serve_unstored(work.direct, work.lookup)

    def _serve_unstored(self, calls: list[tuple[Delivery, Accepted]], lookup: LookAhead | None = None) -> None:
        """Serve kernel calls that were not stored live; on failure their messages go back (never raises)."""
        if self._guarded(calls, partial(self._direct, lookup=lookup), self._serve_unstored, _deliveries, "served"):
            self._poison.stored(_deliveries(calls))

    def _guarded(
        self,
        items: list[T],
        step: Callable[[list[T]], R],
        alone: Callable[[list[T]], None],
        deliveries: Callable[[list[T]], list[Delivery]],
        failed: str,
    ) -> R | None:
        """``step(items)``, or ``None`` once a failure is dealt with: the messages are unsettled until then.

        A transient store error hands them back, unless the store serves other
        work: then each item goes ``alone`` to find the one it keeps failing
        on. Any other error is a message the store refuses (poison, never
        retried): a batch is split the same way, a lone message refused.
        """
        try:
            return step(items)
        except TRANSIENT as exc:
            if len(items) > 1 and self._poison.store_works():
                self._split(items, alone, exc)
            else:
                self._hand_back(deliveries(items), exc)
        except Exception as exc:
            if len(items) > 1:
                self._split(items, alone, exc)
            else:
                d = deliveries(items)[0]
                log.exception("delivery_refused", message_id=d.message_id)
                self._refuse(d, f"the request could not be {failed}: {type(exc).__name__}: {exc}")
        return None

    def _split(self, items: list[T], alone: Callable[[list[T]], None], exc: Exception) -> None:
        log.warning("batch_split", deliveries=len(items), error=f"{type(exc).__name__}: {exc}")
        for item in items:
            alone([item])

    def _hand_back(self, batch: list[Delivery], exc: Exception) -> None:
        """Transient store trouble: redeliver the batch, but give up a message that keeps failing alone."""
        log.error("store_unavailable", deliveries=len(batch), error=str(exc))
        metrics.DATABASE_ERRORS.inc()
        time.sleep(RETRY_PAUSE)
        for d in batch:
            attempts = self._poison.failed(d)
            if attempts is None:
                d.nack(True)
            else:
                log.error("poison_message", message_id=d.message_id, agent=d.user_id, attempts=attempts)
                self._refuse(
                    d, f"gave up after {attempts} attempts to store it; the last error: {type(exc).__name__}: {exc}"
                )

    def _take(self, batch: list[Delivery]) -> Work:
        """Admit and persist a batch, audit it, settle its messages; return the work left after the acks.

        Calls the kernel serves at once are not stored live: their messages
        stay unacknowledged until the reply is out (:meth:`_direct`). Their
        stored copies are looked up while the batch is admitted.
        """
        lookup = self._look_ahead(batch)
        verdicts = self._intake.admit_many(batch)
        accepted = [(d, v) for d, v in zip(batch, verdicts, strict=True) if isinstance(v, Accepted)]
        rejected = [(d, v) for d, v in zip(batch, verdicts, strict=True) if isinstance(v, Rejected)]
        direct = [(d, a) for d, a in accepted if self._served_now(a)]
        accepted = [(d, a) for d, a in accepted if not self._served_now(a)]
        new, existing = self._records.insert_many([a.envelope for _, a in accepted]) if accepted else ([], {})
        fresh = {id(env) for env in new}  # by identity: two copies of one call may share a batch
        entries = [entry(a.envelope, Decision.ACCEPTED) for _, a in accepted if id(a.envelope) in fresh]
        entries += [_rejection(d, rej) for d, rej in rejected]
        self._audit.record_many(entries)
        for d, rej in rejected:
            self._answer(d, rej)
        ack_all([d for d, _ in accepted])
        # A duplicate's record: the stored one, or none yet (a copy of a call first stored in this batch).
        duplicates = [
            (a.envelope, existing.get(a.envelope.key, {})) for _, a in accepted if id(a.envelope) not in fresh
        ]
        return Work([a for _, a in accepted if id(a.envelope) in fresh], duplicates, direct, lookup)

    def _look_ahead(self, batch: list[Delivery]) -> LookAhead | None:
        """Start looking up the stored copies of the deliveries that name a kernel call.

        Keyed as the sender sent them (routing key, user, message id); a call
        that turns out to be keyed otherwise (a task runner acting for its
        agent) is looked up again when it is served.
        """
        keys = [
            record_key(d.user_id, d.message_id)
            for d in batch
            if d.user_id and d.message_id and d.routing_key in CATALOGUE and not is_leased(d.routing_key)
        ]
        if not keys:
            return None
        with self._running_lock:
            since = self._releases
        return LookAhead(self._records.lookup_started(keys), since)

    def _served_now(self, a: Accepted) -> bool:
        """A call the kernel serves on this thread: no worker, no approval."""
        return not is_leased(a.envelope.request.syscall) and not (a.needs_approval and self._gate is not None)

    def _direct(self, calls: list[tuple[Delivery, Accepted]], lookup: LookAhead | None = None) -> bool:
        """Serve kernel calls without a live record, then reply, then acknowledge.

        The unacknowledged message is the durable record: after a crash RabbitMQ
        redelivers it and it runs again (kernel syscalls are idempotent on their
        message id); a copy that arrives once its result is stored is answered
        from it. Copies of a call running on another thread wait for its reply.
        Returns ``True`` once done (see :meth:`_guarded`).
        """
        firsts: dict[str, Accepted] = {}
        copies: list[Envelope] = []
        for _, a in calls:
            if a.envelope.key in firsts or not self._claim(a.envelope.key):
                copies.append(a.envelope)
            else:
                firsts[a.envelope.key] = a
        try:
            stored = self._stored(list(firsts), lookup)
            for key, doc in stored.items():
                env = firsts.pop(key).envelope
                self._release(key)
                self._completion.answer_copy(env, doc)
            for env in copies:
                self._completion.answer_later(env)
            self._recount_redelivered(calls, firsts)
            by_syscall: dict[str, list[Accepted]] = {}
            for a in firsts.values():
                by_syscall.setdefault(a.envelope.request.syscall, []).append(a)
            finished = [pair for syscall, group in by_syscall.items() for pair in self._serve_many(syscall, group)]
            self._completion.finish_unstored(finished)
        finally:
            for key in firsts:
                self._release(key)
        ack_all(_deliveries(calls))  # after the replies: the connection thread sends in order
        return True

    def _recount_redelivered(self, calls: list[tuple[Delivery, Accepted]], running: dict[str, Accepted]) -> None:
        """Recount the memory quota of agents whose memory writes come again after a crash.

        A crash between a write's quota reservation and its note leaves the
        count one high; the redelivered message is the only trace of it.
        """
        if self._recount is None:
            return
        agents = {
            a.envelope.agent
            for d, a in calls
            if d.redelivered and a.envelope.key in running and a.envelope.request.syscall in MEMORY_WRITES
        }
        for agent in sorted(agents):
            log.info("memory_quota_recounted", agent=agent)
            self._recount(agent)

    def _stored(self, keys: list[str], ahead: LookAhead | None) -> dict[str, Doc]:
        """The stored copies of ``keys`` (claimed): from the look-ahead, the rest read now.

        A key the look-ahead did not cover, or whose copy ended here after it
        started (its result may have been stored since), is read again.
        """
        found = ahead.lookup.found() if ahead is not None else {}
        stale = self._released_since(ahead.since, keys) if ahead is not None else set()
        missing = [k for k in keys if ahead is None or k not in ahead.lookup.keys or k in stale]
        if missing:
            found.update(self._records.lookup(missing))
        return {k: found[k] for k in keys if k in found}

    def _run(self, work: Work) -> None:
        for env, doc in work.duplicates:
            self._completion.answer_copy(env, doc)
        by_syscall: dict[str, list[Accepted]] = {}
        for a in work.new:
            if a.needs_approval and self._gate is not None:
                self._gate.park(a.envelope)
            elif is_leased(a.envelope.request.syscall) and not _past_deadline(a.envelope):
                self._leasing.submit(a.envelope)
            elif self._claim(a.envelope.key):
                by_syscall.setdefault(a.envelope.request.syscall, []).append(a)
        for syscall, calls in by_syscall.items():
            try:
                self._completion.finish_many(self._serve_many(syscall, calls))
            finally:
                for a in calls:
                    self._release(a.envelope.key)

    def _refuse(self, d: Delivery, reason: str) -> None:
        rej = Rejected(ErrorCode.INVALID_ARGS, reason, agent=d.user_id)
        try:
            self._audit.record_many([_rejection(d, rej)])
            self._answer(d, rej)
        except Exception:
            log.exception("refuse_failed", message_id=d.message_id)
            d.dead_letter(ErrorCode.INVALID_ARGS.value, reason)

    def _answer(self, d: Delivery, rej: Rejected) -> None:
        """Reply to a rejected delivery (where allowed), then dead-letter or ack it."""
        log.warning("rejected", message_id=d.message_id, agent=rej.agent, code=rej.code.value, reason=rej.reason)
        metrics.SYSCALLS.labels(_known(rej.syscall), "denied" if rej.status == Status.DENIED else "rejected").inc()
        if rej.dead_letter:
            metrics.DEAD_LETTERS.labels(rej.code.value).inc()
        if d.reply_to and reply_allowed(rej.sender, d.reply_to):
            # Without a message_id the reply carries the correlation_id as its id.
            reply_id = d.message_id or d.correlation_id or ""
            reply = Reply.failure(reply_id, rej.syscall, rej.code, rej.reason, status=rej.status)
            self._outbox.reply(d.reply_to, d.correlation_id or d.message_id or "", reply, _noop)
        if rej.dead_letter:
            d.dead_letter(rej.code.value, rej.reason)
        else:
            d.ack()

    # -- serving ---------------------------------------------------------------

    def execute(self, env: Envelope, args: BaseModel) -> None:
        """Serve one accepted syscall (or hand it to a worker queue) and answer it."""
        if not self._claim(env.key):
            return
        try:
            if is_leased(env.request.syscall):
                if self._leasing.ending(env.key):
                    return  # the recovery sweep found the live record of a call answered while the store was away
                if not _past_deadline(env):
                    self._leasing.submit(env)
                    return
            self._completion.finish_many(self._serve_many(env.request.syscall, [Accepted(env, args)]))
        finally:
            self._release(env.key)

    def _serve_many(self, syscall: str, calls: list[Accepted]) -> list[tuple[Envelope, Reply]]:
        started = utcnow()
        replies: list[tuple[Envelope, Reply]] = []
        todo: list[Accepted] = []
        for a in calls:
            deadline = a.envelope.request.deadline
            if deadline is not None and _past_deadline(a.envelope):
                reason = f"deadline {deadline.isoformat()} passed before the call started"
                replies.append(
                    (a.envelope, Reply.failure(a.envelope.message_id, syscall, ErrorCode.DEADLINE_EXCEEDED, reason))
                )
            else:
                todo.append(a)
        outcomes = self._kernel.run_many(syscall, [(_context(a.envelope), a.args) for a in todo]) if todo else []
        for a, outcome in zip(todo, outcomes, strict=True):
            replies.append((a.envelope, _reply(a.envelope, outcome, started)))
        return replies

    def _claim(self, key: str) -> bool:
        with self._running_lock:
            if key in self._running:
                return False
            self._running.add(key)
            return True

    def _release(self, key: str) -> None:
        with self._running_lock:
            self._running.discard(key)
            self._releases += 1
            self._released[key] = self._releases
            self._released.move_to_end(key)
            if len(self._released) > RELEASES_KEPT:
                self._released.popitem(last=False)

    def _released_since(self, since: int, keys: list[str]) -> set[str]:
        """Those of ``keys`` whose calls ended here after release number ``since``."""
        with self._running_lock:
            if since < self._releases - RELEASES_KEPT:  # older than what is kept: trust none
                return set(keys)
            return {k for k in keys if self._released.get(k, 0) > since}


def _context(env: Envelope) -> CallContext:
    req = env.request
    return CallContext(
        agent=env.agent, call_id=env.message_id, syscall=req.syscall, session=req.session, program=req.program
    )


def _reply(env: Envelope, outcome: BaseModel | Exception, started: datetime) -> Reply:
    """The reply for what the kernel returned (or raised) for one call."""
    syscall = env.request.syscall
    if isinstance(outcome, SyscallFailed):
        status = Status.DENIED if isinstance(outcome, Denied) else Status.ERROR
        return Reply.failure(env.message_id, syscall, outcome.code, outcome.message, status=status)
    if isinstance(outcome, Exception):  # logged with its traceback where it was caught
        return Reply.failure(env.message_id, syscall, ErrorCode.INTERNAL, f"internal error: {type(outcome).__name__}")
    timings = Timings(queue_ms=round(elapsed_ms(env.received_at, started), 3), run_ms=round(elapsed_ms(started), 3))
    return Reply.ok(env.message_id, syscall, outcome.model_dump(mode="json"), timings=timings)


def _divergence(env: Envelope, doc: Doc) -> str | None:
    """How a task's replayed call differs from the one stored under its message id, if it does."""
    stored = doc.get("syscall")
    if stored is None:  # a copy of a call first stored in this very batch
        return None
    if stored != env.request.syscall:
        return (
            f"call {env.message_id} of the task was {stored} when it first ran and is {env.request.syscall} now:"
            " the program must make the same syscalls in the same order on every run"
        )
    if (doc.get("args") or {}) != env.request.args:
        return (
            f"call {env.message_id} of the task ({stored}) has other arguments than when it first ran:"
            " the program must make the same syscalls in the same order on every run"
        )
    return None


def _known(syscall: str | None) -> str:
    """A syscall name fit for a metric label: the catalogue's names only (an agent may send anything)."""
    return syscall if syscall is not None and syscall in CATALOGUE else "unknown"


def _past_deadline(env: Envelope) -> bool:
    return env.request.deadline is not None and utcnow() > env.request.deadline


def _noop() -> None:
    pass


def _itself(batch: list[Delivery]) -> list[Delivery]:
    return batch


def _deliveries(calls: list[tuple[Delivery, Accepted]]) -> list[Delivery]:
    return [d for d, _ in calls]


@dataclass(frozen=True)
class LookAhead:
    """A lookup of stored copies started before admission, and the release number it started at."""

    lookup: Lookup
    since: int


@dataclass(frozen=True)
class Work:
    """What is left of a batch after its messages are acknowledged."""

    new: list[Accepted]
    duplicates: list[tuple[Envelope, Doc]]
    #: Kernel calls served before their messages are acknowledged.
    direct: list[tuple[Delivery, Accepted]]
    #: Their stored copies, looked up while the batch was admitted.
    lookup: LookAhead | None = None

    @property
    def unacked(self) -> list[Delivery]:
        """Deliveries still to settle."""
        return [d for d, _ in self.direct]


def _rejection(d: Delivery, rej: Rejected) -> Entry:
    decision = Decision.DENIED if rej.status == Status.DENIED else Decision.REJECTED
    return Entry(rej.agent, rej.syscall, d.message_id, decision, rej.code.value, rej.reason, rej.resource)
