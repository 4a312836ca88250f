"""Recovery: finish what a crash or a lost connection left unfinished.

Once a syscall's record is stored, MongoDB owns it. On start (and in a
periodic sweep of records old enough that no live delivery can still be
serving them) the scheduler re-sends replies that were committed but may not
have left, runs accepted syscalls again (they are idempotent on their
message id), and parks again a call that needs approval. Queued and leased
calls belong to the dispatcher.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from pydantic import BaseModel
from pymongo.errors import PyMongoError

from aiosd.daemon.pipeline.flow import MEMORY_WRITES, Completion
from aiosd.daemon.pipeline.records import Envelope, Records, envelope_from_record
from aiosd.daemon.store import Doc
from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.protocol import ErrorCode, Reply
from aiosd.sdk.syscalls import CATALOGUE

log = get_logger(__name__)

#: Live records whose results are looked up with one read.
RESULTS_PER_READ = 256

#: Serve an accepted syscall (the pipeline's ``execute``).
Execute = Callable[[Envelope, BaseModel], None]


class Holder(Protocol):
    """Parks a recovered call that needs approval (see :mod:`.approvals`)."""

    def hold(self, doc: Doc) -> bool:
        """``True`` if the call was (or is now) parked for a human."""


class Recovery:
    """Finishes accepted syscalls and re-sends replies that may not have left."""

    def __init__(
        self,
        records: Records,
        completion: Completion,
        execute: Execute,
        gate: Holder | None = None,
        recount: Callable[[str], None] | None = None,
    ) -> None:
        self._records = records
        self._completion = completion
        self._execute = execute
        self._gate = gate
        self._recount = recount

    def recount_quotas(self) -> int:
        """Before serving again: recount the memory quota of agents whose memory syscalls were in flight."""
        if self._recount is None:
            return 0
        agents = {doc.get("agent") for doc in self._records.live() if doc.get("syscall") in MEMORY_WRITES}
        done = 0
        for agent in sorted(a for a in agents if isinstance(a, str)):
            try:
                self._recount(agent)
                done += 1
            except PyMongoError:
                raise
            except Exception:  # one agent's odd notes must not stop the scheduler from starting
                log.exception("quota_recount_failed", agent=agent)
        return done

    def recover(self, older_than: float = 0.0) -> int:
        """Handle live records accepted at least ``older_than`` seconds ago; return how many.

        A record that fails is isolated: its syscall is failed with an
        ``internal`` reply (or, if even its envelope cannot be read, marked
        ``unrecoverable`` and skipped from then on) and recovery goes on.
        """
        count = 0
        for chunk in _chunks(self._records.live(older_than), RESULTS_PER_READ):
            # One read of the results per chunk: a backlog of queued calls costs a few reads, not one each.
            results = self._records.results_of([str(doc["_id"]) for doc in chunk])
            for doc in chunk:
                try:
                    count += self._recover_one(doc, results.get(str(doc["_id"])))
                except PyMongoError:
                    raise  # the store itself: the next sweep tries again
                except Exception as exc:
                    log.exception("recovery_failed", key=doc.get("_id"))
                    self._give_up(doc, exc)
        return count

    def _recover_one(self, doc: Doc, done: Doc | None) -> int:
        env = envelope_from_record(doc)
        if done is not None:
            self._completion.send(env, Reply.model_validate(done["reply"]))
        elif doc["state"] == "accepted":
            # A call that needs approval may have been stored but not parked before a crash.
            if self._gate is None or not self._gate.hold(doc):
                self._execute(env, _args_of(env))
        else:
            return 0  # queued or leased: the dispatcher owns it; unrecoverable: given up
        return 1

    def _give_up(self, doc: Doc, exc: Exception) -> None:
        reason = f"the call could not be finished after a restart: {type(exc).__name__}"
        try:
            env = envelope_from_record(doc)
            failure = Reply.failure(env.message_id, env.request.syscall, ErrorCode.INTERNAL, reason)
            self._completion.finish_many([(env, failure)])
        except PyMongoError:
            raise
        except Exception:
            log.exception("record_unrecoverable", key=doc.get("_id"))
            self._records.mark_unrecoverable(str(doc["_id"]), reason)


def _chunks(docs: Iterator[Doc], size: int) -> Iterator[list[Doc]]:
    chunk: list[Doc] = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _args_of(env: Envelope) -> BaseModel:
    return CATALOGUE[env.request.syscall].args.model_validate(env.request.args)
