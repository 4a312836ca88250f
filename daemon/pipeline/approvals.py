"""Human approvals: park a syscall, record a decision, run or deny it.

A syscall whose policy requires approval is accepted and stored like any
other, then *parked*: its live record moves to ``pending_approval`` and the
agent gets an interim ``pending`` reply (code ``approval_pending``). An
operator decides with ``aiosd approve``/``aiosd deny``; an undecided one is
denied by the scheduler after ``approval_timeout``.

A decision is one insert into the ``approvals`` collection with ``_id`` =
the syscall's key, so the first decision wins on any server (an operator's
approve racing the expiry job cannot both land) and the collection is never
updated. The scheduler's job (every ``approval_poll`` seconds) looks up the
decision of each parked call by ``_id`` and runs it or sends the denial.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from aiosd.daemon.access.authorizer import Irreversible, PolicyLookup, never_irreversible
from aiosd.daemon.access.policy import resource_of
from aiosd.daemon.audit.chain import AuditLog, Decision
from aiosd.daemon.errors import AccessError
from aiosd.daemon.pipeline.records import Envelope, envelope_from_record
from aiosd.daemon.store import Doc
from aiosd.daemon.transport.outbox import Outbox
from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.protocol import ErrorCode, ErrorInfo, Reply, Status, utcnow
from aiosd.sdk.syscalls import CATALOGUE

log = get_logger(__name__)

APPROVALS = "approvals"
PENDING = "pending_approval"
APPROVED, DENIED = "approved", "denied"

Execute = Callable[[Envelope, BaseModel], None]
Finish = Callable[[Envelope, Reply], None]


class Approvals:
    """Both sides of approvals: the scheduler's gate and job, the operator's commands."""

    def __init__(
        self,
        live: Collection[Doc],
        decisions: Collection[Doc],
        audit: AuditLog,
        policies: PolicyLookup | None = None,
        timeout: float = 3600.0,
        outbox: Outbox | None = None,
        irreversible: Irreversible = never_irreversible,
    ) -> None:
        """The scheduler passes ``policies``, ``outbox`` and ``irreversible``; operator commands need none."""
        self._live = live
        self._decisions = decisions
        self._audit = audit
        self._policies = policies
        self._timeout = timeout
        self._outbox = outbox
        #: Calls that need approval whatever the policy says (irreversible tools).
        self._irreversible = irreversible

    # -- scheduler: the pipeline's gate --------------------------------------------

    def park(self, env: Envelope) -> None:
        """Hold an accepted syscall for a human; tell the agent it waits."""
        now = utcnow()
        expires = now + timedelta(seconds=self._timeout)
        doc = self._live.find_one_and_update(
            {"_id": env.key, "state": "accepted"},
            {"$set": {"state": PENDING, "approval": {"requested_at": now, "expires_at": expires}}},
        )
        if doc is None:
            return  # it moved on (another thread parked or ran it)
        self._record(env, Decision.PENDING, f"waits for a human approval until {expires.isoformat(timespec='seconds')}")
        log.info("approval_pending", key=env.key, agent=env.agent, syscall=env.request.syscall)
        if env.reply_to and self._outbox is not None:
            message = (
                f"waiting for a human approval (id {env.key}); the reply follows the decision, "
                f"or a denial at {expires.isoformat(timespec='seconds')}"
            )
            interim = Reply(
                id=env.message_id,
                syscall=env.request.syscall,
                status=Status.PENDING,
                error=ErrorInfo(code=ErrorCode.APPROVAL_PENDING, message=message),
            )
            self._outbox.reply(env.reply_to, env.correlation_id, interim, lambda: None)

    def hold(self, doc: Doc) -> bool:
        """Recovery: park an accepted record that needs approval and has none; ``True`` if held."""
        decision = self._decisions.find_one({"_id": doc["_id"]})
        if decision is not None:
            if decision["decision"] == APPROVED:
                return False
            self._live.update_one({"_id": doc["_id"], "state": "accepted"}, {"$set": {"state": PENDING}})
            return True
        standing = self._policies.standing(doc["agent"]) if self._policies else None
        needed = standing is not None and (
            standing.policy.needs_approval(doc["syscall"]) or self._irreversible(doc["syscall"], doc.get("args") or {})
        )
        if not needed:
            return False
        self.park(envelope_from_record(doc))
        return True

    # -- scheduler: the periodic job -------------------------------------------------

    def settle(self, execute: Execute, finish: Finish) -> int:
        """Run approved calls, deny denied and expired ones; return how many were settled."""
        count = 0
        now = utcnow()
        for doc in list(self._live.find({"state": PENDING})):
            decision = self._decisions.find_one({"_id": doc["_id"]})
            expires = (doc.get("approval") or {}).get("expires_at")
            if decision is None and (expires is None or expires <= now):
                reason = f"expired: nobody decided within {self._timeout:g}s"
                decision = self._decide(doc, False, "scheduler", reason)
            if decision is None:
                continue
            env = envelope_from_record(doc)
            if decision["decision"] == APPROVED:
                self._live.update_one({"_id": doc["_id"], "state": PENDING}, {"$set": {"state": "accepted"}})
                execute(env, CATALOGUE[env.request.syscall].args.model_validate(env.request.args))
            else:
                text = f"approval denied by {decision['by']}" + (
                    f": {decision['reason']}" if decision.get("reason") else ""
                )
                finish(
                    env,
                    Reply.failure(
                        env.message_id, env.request.syscall, ErrorCode.APPROVAL_DENIED, text, status=Status.DENIED
                    ),
                )
            count += 1
        return count

    # -- operator ----------------------------------------------------------------------

    def pending(self) -> list[Doc]:
        """Parked calls, oldest first, each with its decision if one was made but not yet applied."""
        docs = list(self._live.find({"state": PENDING}).sort("accepted_at", 1))
        for doc in docs:
            doc["decision"] = self._decisions.find_one({"_id": doc["_id"]})
        return docs

    def decide(self, ident: str, approve: bool, actor: str, reason: str | None = None) -> Doc:
        """Approve or deny the parked call ``ident`` (``agent/message_id`` or a unique message id)."""
        doc = self._find(ident)
        decision = self._decide(doc, approve, actor, reason)
        if decision["by"] != actor or decision["decision"] != (APPROVED if approve else DENIED):
            raise AccessError(f"{doc['_id']} was already {decision['decision']} by {decision['by']}")
        return decision

    def _decide(self, doc: Doc, approve: bool, actor: str, reason: str | None) -> Doc:
        decision: Doc = {
            "_id": doc["_id"],
            "decision": APPROVED if approve else DENIED,
            "by": actor,
            "reason": reason,
            "at": utcnow(),
            "agent": doc["agent"],
            "syscall": doc["syscall"],
        }
        try:
            self._decisions.insert_one(decision)
        except DuplicateKeyError:
            existing = self._decisions.find_one({"_id": doc["_id"]})
            return existing if existing is not None else decision
        env = envelope_from_record(doc)
        self._record(env, Decision.APPROVED if approve else Decision.APPROVAL_DENIED, reason, actor)
        return decision

    def _find(self, ident: str) -> Doc:
        query: dict[str, Any] = {"_id": ident} if "/" in ident else {"id": ident}
        found = list(self._live.find({**query, "state": PENDING}).limit(5))
        if not found:
            raise AccessError(f"no syscall {ident!r} is waiting for approval (see `aiosd approvals`)")
        if len(found) > 1:
            raise AccessError(f"{ident!r} is ambiguous; use one of: {', '.join(d['_id'] for d in found)}")
        return found[0]

    def _record(self, env: Envelope, decision: Decision, reason: str | None, actor: str | None = None) -> None:
        self._audit.record(
            agent=env.agent,
            syscall=env.request.syscall,
            message_id=env.message_id,
            decision=decision,
            reason=reason,
            resource=resource_of(env.agent, env.request),
            actor=actor,
        )
