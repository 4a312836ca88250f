"""The leased-work service: queue syscalls served by workers, lease them, settle outcomes.

Accepted syscalls that the catalogue marks as leased (``llm.chat`` for LLM
workers, ``tool.call`` for tool runners) are queued in MongoDB (their live records), not
in memory and not in worker queues: the :class:`~.dispatcher.Dispatcher`
leases them to workers with room, in the policy's order. Worker events arrive
here: heartbeats extend leases, outcomes settle, re-queue (time slice over) or
fail a call, goodbyes hand everything back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

from pymongo.collection import Collection

from aiosd.daemon.access.spending import Spent, tally
from aiosd.daemon.leasing.book import LeaseBook
from aiosd.daemon.leasing.endings import Ending, Endings, passing
from aiosd.daemon.leasing.fleet import Fleet
from aiosd.daemon.leasing.totals import UsageTotals
from aiosd.daemon.pipeline.records import Envelope, elapsed_ms, envelope_from_record, live_record
from aiosd.daemon.services.sessions import SessionService, fit
from aiosd.daemon.store import Doc
from aiosd.sdk.cluster import Goodbye, Heartbeat, Outcome
from aiosd.sdk.llm import LlmChatResult
from aiosd.sdk.process import metrics
from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.protocol import ErrorCode, Reply, Timings, Usage
from aiosd.sdk.syscalls import served_by

log = get_logger(__name__)

#: Commits, audits and sends a batch of replies (:meth:`~aiosd.daemon.pipeline.flow.Completion.finish_many`);
#: ``True``: an earlier try of the same replies may have stored some of them.
Finish = Callable[[list[tuple[Envelope, Reply]], bool], None]


class LeasedWork:
    """Scheduler side of leased syscalls (LLM calls and tool calls)."""

    def __init__(
        self,
        book: LeaseBook,
        fleet: Fleet,
        usage: Collection[Doc],
        sessions: SessionService,
        finish: Finish,
        wakeup: threading.Event,
        *,
        lease_ttl: float,
        max_attempts: int,
        on_usage: Callable[[str, Usage, int], None] | None = None,
        may_retry: Callable[[Doc], bool] | None = None,
    ) -> None:
        self.book = book
        self.fleet = fleet
        #: Lifetime totals per agent, written by the periodic job (see :mod:`.totals`).
        self.totals = UsageTotals(usage)
        self._sessions = sessions
        self._finish = finish
        self._wakeup = wakeup
        self._lease_ttl = lease_ttl
        self._max_attempts = max_attempts
        self._on_usage = on_usage
        #: Whether a call whose lease was lost may run again (not an irreversible tool's).
        self._may_retry = may_retry or (lambda _doc: True)
        #: Calls out of the book whose reply is not committed yet, some parked (see :mod:`.endings`).
        self.endings = Endings()

    def _wake(self) -> None:
        self._wakeup.set()  # the dispatcher runs a round soon

    def may_retry(self, entry: Doc) -> bool:
        """Whether a call whose lease was lost may run again (not an irreversible tool's)."""
        return self._may_retry(entry)

    def ending(self, key: str) -> bool:
        """Whether the call was answered here and its reply is on its way (or lately committed after an outage)."""
        return key in self.endings

    def submit(self, env: Envelope) -> None:
        """Queue an accepted syscall for a worker (with its session's history, if any)."""
        if self.ending(env.key):  # answered, its reply not committed yet: the sweep found its live record
            log.info("ending_call_not_queued", key=env.key)
            return
        req = env.request
        record: Doc = {
            "_id": env.key,
            "id": env.message_id,
            "agent": env.agent,
            "syscall": req.syscall,
            "args": req.args,
            "priority": env.priority,
            "deadline": req.deadline,
            "session": req.session,
            "program": req.program,  # las ranks a call by its program's attained service
            "background": req.task is not None,  # a task's call waits behind interactive ones (priority)
        }
        if self.book.enqueue(record, self._prompt(env), live_record(env)):
            log.debug("llm_queued", message_id=env.message_id, agent=env.agent)
            self._wake()

    def _prompt(self, env: Envelope) -> list[dict[str, Any]] | None:
        req = env.request
        if req.session is None or served_by(req.syscall) != "llm":
            return None
        own = list(req.args.get("messages") or [])
        history = self._sessions.history(env.agent, req.session)
        context = min(self.fleet.context_lengths(), default=0)
        return fit(history, own, context, int(req.args.get("max_tokens") or 256))

    # -- worker events -----------------------------------------------------------

    def on_events(self, events: list[Heartbeat | Goodbye | Outcome]) -> None:
        """Apply a batch of worker events, in order; the calls they complete are committed together."""
        done: list[Ending] = []
        try:
            for event in events:
                if not (isinstance(event, Outcome) and event.status == "done"):
                    self.on_event(event)  # a heartbeat writes the worker's document: it may raise
                    continue
                self.fleet.release(event.worker_id, event.lease_id)
                entry = self._taking(event.key, partial(self.book.settle, event.key, event.lease_id, event.usage,
                                                        event.run_ms))  # fmt: skip
                if entry is None:
                    self._log_stale(event, None)
                else:
                    done.append(Ending(entry, answer=event))
        finally:  # what settled is out of the book: it is committed (or parked) whatever failed after it
            if done:
                self._wake()
                self._end(done)

    def on_event(self, event: Heartbeat | Goodbye | Outcome) -> None:
        """Apply one worker event."""
        if isinstance(event, Heartbeat):
            self._heartbeat(event)
        elif isinstance(event, Goodbye):
            log.info("worker_goodbye", worker=event.worker_id)
            self.lost(event.worker_id, reason="worker stopped")
        else:
            self._outcome(event)

    def _heartbeat(self, beat: Heartbeat) -> None:
        state = beat.worker
        if self.fleet.heartbeat(state):
            log.info(
                "worker_registered",
                worker=state.worker_id,
                model=state.model,
                capacity=state.capacity,
                backend=state.backend,
            )
        self.book.extend(state.worker_id, state.leases, self._lease_ttl)
        self._wake()

    def _outcome(self, out: Outcome) -> None:
        self.fleet.release(out.worker_id, out.lease_id)
        self._wake()
        if out.status == "done":
            self.on_events([out])
        elif out.status == "slice":
            doc = self.book.requeue(out.key, out.lease_id, snapshot=out.snapshot, usage=out.usage, run_ms=out.run_ms)
            self._log_stale(out, doc)
        elif out.status == "released":
            doc = self.book.requeue(
                out.key, out.lease_id, snapshot=out.snapshot, usage=out.usage, run_ms=out.run_ms, refund_attempt=True
            )
            self._log_stale(out, doc)
        else:
            self._error(out)

    # -- replies of calls out of the book -----------------------------------------------

    def _taking(self, key: str, take: Callable[[], Doc | None]) -> Doc | None:
        """``take()`` a call out of the book, marked as ending before it leaves (never in neither place)."""
        opened = self.endings.open(key)
        entry = take()
        if entry is None and opened:
            self.endings.close(key)
        return entry

    def retry_parked(self) -> None:
        """Try again to commit the replies a passing store error held back (the housekeeping job)."""
        endings = self.endings.take()
        if endings:
            log.debug("parked_replies_retried", calls=len(endings))
            self._end(endings, again=True)

    def _end(self, endings: list[Ending], again: bool = False) -> None:
        """Commit the replies of calls taken out of the book (never raises: an ending is never dropped).

        A transient store error parks them for the next try. An error the
        store gives for one reply (not an outage) splits the batch, and the
        call whose reply keeps failing alone is failed instead.
        """
        try:
            self._commit(endings, again)
        except Exception as exc:
            if passing(exc):
                self._park(endings, again, exc)
            elif len(endings) > 1:
                log.warning("reply_batch_split", calls=len(endings), error=f"{type(exc).__name__}: {exc}")
                for e in endings:
                    self._end([e], again=True)  # the batch's write may have stored some of them
            else:
                self._refuse(endings[0], exc)
            return
        if again and any(e.parked for e in endings):
            log.info("parked_replies_committed", calls=len(endings))
        self.endings.done(endings)

    def _park(self, endings: list[Ending], again: bool, exc: Exception) -> None:
        self.endings.park(endings)
        metrics.DATABASE_ERRORS.inc()
        # Logged as an error when calls are first parked; the tries after it, every second, quietly.
        (log.debug if again else log.error)(
            "replies_parked", calls=len(endings), parked=self.endings.parked(), error=str(exc)
        )

    def _refuse(self, ending: Ending, exc: Exception) -> None:
        """The store refuses this call's reply: fail the call with ``internal`` instead (once)."""
        if ending.env is None or ending.refused:
            # Not even a failure can be stored: the call stays as its live record was last written,
            # for the operator (a restart runs it again).
            log.exception("reply_lost", key=ending.key)
            self.endings.done([ending])
            return
        log.exception("reply_refused", key=ending.key)
        ending.refused = True
        ending.remembered = True  # a failure does not extend the session (an extension made already stays)
        # The reply is made again, as a failure (an answer's tokens were counted when it was first made).
        ending.answer, ending.reply = None, None
        ending.failure = (ErrorCode.INTERNAL, f"the reply could not be stored: {type(exc).__name__}: {exc}")
        self._end([ending], again=True)

    def _commit(self, endings: list[Ending], again: bool) -> None:
        """One read of the records not read yet, each step once, one commit; usage added up for the periodic write."""
        self._read_envelopes([e for e in endings if not e.read])
        ready = [e for e in endings if e.env is not None]
        spent: Spent = {}
        try:
            for e in ready:
                if e.reply is None:
                    e.reply = self._reply(e, spent)
        finally:  # a reply made is never made again: its tokens are counted now, whatever fails next
            self._account(spent)
        for e in ready:
            if not e.remembered:
                self._remember(e)
                e.remembered = True
        self._finish([(e.env, e.reply) for e in ready if e.env is not None and e.reply is not None], again)

    def _read_envelopes(self, unread: list[Ending]) -> None:
        if not unread:
            return
        records = self.book.read([e.key for e in unread], ended=True)
        for e in unread:
            record = records.get(e.key)
            e.read = True
            if record is None:  # finished and retired already: a late duplicate
                log.warning("settled_call_gone", key=e.key)
            else:
                e.env = envelope_from_record(record)

    def _reply(self, ending: Ending, spent: Spent) -> Reply:
        """The call's reply; an LLM answer's tokens are counted here (once per call)."""
        env, entry, out = ending.env, ending.entry, ending.answer
        assert env is not None
        usage = Usage(**entry.get("usage") or {})
        if out is None:
            code, message = ending.failure or (ErrorCode.INTERNAL, "the call failed")
            return Reply.failure(env.message_id, env.request.syscall, code, message, usage=usage)
        if entry["kind"] == "tools":
            result: dict[str, Any] = out.result or {}
        else:
            result = _chat_result(out, entry)
            _count_tokens(out.model or str(entry.get("model") or "unknown"), env.agent, usage)
            tally(spent, env.agent, usage)
        run_ms = float(entry.get("run_ms") or 0.0)
        timings = Timings(queue_ms=round(max(elapsed_ms(env.received_at) - run_ms, 0.0), 3), run_ms=round(run_ms, 3))
        return Reply.ok(env.message_id, env.request.syscall, result, usage=usage, timings=timings)

    def _remember(self, ending: Ending) -> None:
        """Extend an answered LLM call's session with its messages and the answer."""
        env, out = ending.env, ending.answer
        if env is None or out is None or env.request.session is None or ending.entry["kind"] == "tools":
            return
        answer: dict[str, Any] = {"role": "assistant", "content": out.text}
        if out.tool_calls:
            answer["tool_calls"] = out.tool_calls
        own = list(env.request.args.get("messages") or [])
        self._sessions.extend(env.agent, env.request.session, [*own, answer])

    def _error(self, out: Outcome) -> None:
        code = out.error_code or ErrorCode.INTERNAL
        message = out.error_message or "the worker failed the call"
        if out.retryable:
            doc = self.book.requeue(out.key, out.lease_id, usage=out.usage, run_ms=out.run_ms)
            if doc is not None and int(doc.get("attempts") or 0) >= self._max_attempts:
                self.fail(doc, None, code, f"{message} (gave up after {doc['attempts']} attempts)")
            self._log_stale(out, doc)
            return
        doc = self._taking(out.key, partial(self.book.give_up, out.key, out.lease_id))
        if doc is None:
            self._log_stale(out, None)
            return
        self.fail(doc, out.lease_id, code, message, claimed=True)

    def _log_stale(self, out: Outcome, doc: Doc | None) -> None:
        if doc is None and out.key in self.endings:  # settled already, its reply on its way (parked, maybe)
            log.debug("outcome_of_ending_call", lease=out.lease_id, key=out.key, status=out.status)
        elif doc is None:
            # The lease expired and the call moved on (or another outcome won): first completion wins.
            log.warning(
                "stale_outcome_dropped", worker=out.worker_id, lease=out.lease_id, key=out.key, status=out.status
            )

    # -- lost leases ---------------------------------------------------------------

    def lost(self, worker_id: str, reason: str) -> None:
        """A worker is gone: re-queue (or fail) every call it held, at once."""
        self.fleet.remove(worker_id)
        for doc in self.book.held_by(worker_id):
            self.expire(doc, reason)

    def expire(self, doc: Doc, reason: str) -> None:
        """A lease ended without an outcome: re-queue the call, or fail it past the attempt limit."""
        lease = doc["lease"]
        self.fleet.release(lease["worker"], lease["id"])
        attempts = int(doc.get("attempts") or 0)
        if not self._may_retry(doc):
            self.fail(
                doc,
                lease["id"],
                ErrorCode.UNAVAILABLE,
                f"{reason}: the call of an irreversible tool is not run again (it may have had its effect)",
            )
            return
        if attempts >= self._max_attempts:
            self.fail(
                doc, lease["id"], ErrorCode.UNAVAILABLE, f"LLM call failed: {reason}; gave up after {attempts} attempts"
            )
            return
        if self.book.requeue(doc["_id"], lease["id"]) is not None:
            log.warning("lease_requeued", key=doc["_id"], worker=lease["worker"], attempt=attempts, reason=reason)
            self._wake()

    def fail(self, doc: Doc, lease_id: str | None, code: ErrorCode, message: str, *, claimed: bool = False) -> None:
        """Fail a leased syscall with ``code``; a no-op if it moved on meanwhile."""
        key = str(doc["_id"])
        if not claimed and self._taking(key, partial(self.book.give_up, key, lease_id)) is None:
            return
        log.warning("llm_failed", key=key, code=code.value, reason=message)
        self._end([Ending(doc, failure=(code, message))])

    def _account(self, spent: Spent) -> None:
        """Add tokens and LLM calls to each agent's totals (written periodically) and quota period."""
        if not spent:
            return
        self.totals.add(spent)
        if self._on_usage is not None:
            for agent, (usage, calls) in spent.items():
                self._on_usage(agent, usage, calls)  # per-period accounting for token quotas


def _count_tokens(model: str, agent: str, usage: Usage) -> None:
    for kind, n in (
        ("prompt", usage.prompt_tokens),
        ("completion", usage.completion_tokens),
        ("cached", usage.cached_tokens),
    ):
        if n:
            metrics.TOKENS.labels(model, agent, kind).inc(n)


def _chat_result(out: Outcome, doc: Doc) -> dict[str, Any]:
    result = LlmChatResult(
        text=out.text,
        finish_reason=_finish_reason(out.finish_reason),
        tool_calls=out.tool_calls,
        model=out.model,
        worker=out.worker_id,
        slices=int(doc.get("slices") or 1),
    )
    return result.model_dump(mode="json")


def _finish_reason(reason: str | None) -> Literal["stop", "length", "tool_calls"]:
    if reason == "length":
        return "length"
    return "tool_calls" if reason == "tool_calls" else "stop"
