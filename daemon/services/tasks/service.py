"""The ``task.*`` and ``batch.*`` syscalls: tasks submitted, started by runners, finished once.

A task's life (every step a guarded single-document update):

    queued --task.start--> running --task.finish--> succeeded | failed
       |                     |  (lease ran out: the next task.start takes it over, attempt + 1)
       +--cancel/deadline--> cancelled | expired

A task is queued by storing its document and publishing its id to the
durable task queue; a runner that takes the message asks ``task.start`` what
to do: run it (with a new lease), skip it (the task is final), or hold the
message and ask again (another runner's lease is still live, or the batch is
at its ``max_concurrent``). The message is acknowledged by the runner only
once the task is final, so a task is never lost between runners.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

from aiosd.daemon.access.authorizer import PolicyLookup
from aiosd.daemon.errors import Denied, NotFound
from aiosd.daemon.services.context import CallContext
from aiosd.daemon.services.tasks.leases import TaskLeases
from aiosd.daemon.services.tasks.store import STORED_COUNTS, TaskStore, batch_task_id, task_doc
from aiosd.daemon.store import Doc
from aiosd.sdk.process import metrics
from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.protocol import utcnow
from aiosd.sdk.tasks import (
    BatchInfo,
    BatchRef,
    BatchSubmitArgs,
    TaskFinishArgs,
    TaskFinished,
    TaskHeartbeat,
    TaskHeartbeatArgs,
    TaskInfo,
    TaskList,
    TaskListArgs,
    TaskRef,
    TaskStart,
    TaskStartArgs,
    TaskState,
    TaskSubmitArgs,
)

log = get_logger(__name__)

#: Publish a task id to the task queue with a priority (the scheduler's connection).
PublishTask = Callable[[str, int], None]
#: Seconds a runner holding a message of a task it may not start yet waits before asking again.
WAIT_SECONDS = 2.0

QUEUED = TaskState.QUEUED.value
RUNNING = TaskState.RUNNING.value


class TaskService:
    """Serves the task and batch syscalls."""

    def __init__(self, store: TaskStore, leases: TaskLeases, policies: PolicyLookup, publish: PublishTask) -> None:
        self._store = store
        self.leases = leases
        self._leases = leases
        self._policies = policies
        self._publish = publish

    # -- agents ------------------------------------------------------------------

    def submit(self, ctx: CallContext, args: TaskSubmitArgs) -> TaskInfo:
        """``task.submit``: store the task and queue it (once per idempotency key or message id)."""
        priority = self._program_allowed(ctx.agent, args.program, args.priority)
        key = args.idempotency_key or f"msg\0{ctx.call_id}"
        task_id = "t-" + hashlib.sha256(f"{ctx.agent}\0{key}".encode()).hexdigest()[:24]
        doc = task_doc(task_id, ctx.agent, args.program, args.input, priority, args.deadline, submitted_by=ctx.call_id)
        stored, created = self._store.insert(doc)
        if created or (stored.get("state") == QUEUED and stored.get("submitted_by") == ctx.call_id):
            # New, or this very call run again after a crash that may have come before the publish.
            self._publish(task_id, priority)
        return info(stored)

    def get(self, ctx: CallContext, args: TaskRef) -> TaskInfo:
        """``task.get``: one of the caller's tasks."""
        return info(self._own(ctx.agent, args.id))

    def cancel(self, ctx: CallContext, args: TaskRef) -> TaskInfo:
        """``task.cancel``: a queued or running task becomes cancelled (a running one's lease is void)."""
        doc = self._own(ctx.agent, args.id)
        return info(self.cancel_task(doc))

    def cancel_task(self, doc: Doc) -> Doc:
        """Cancel a task that is not final yet; return it as it is now."""
        for state in (QUEUED, RUNNING):
            done = self._store.transition(
                doc["_id"],
                {"state": state},
                {"$set": {"state": TaskState.CANCELLED.value, "finished_at": utcnow()}, "$unset": {"lease": ""}},
            )
            if done is not None:
                self._leases.drop(doc["_id"])
                self._moved(done, state, TaskState.CANCELLED.value)
                return done
        return self._store.get(doc["_id"]) or doc

    def list_tasks(self, ctx: CallContext, args: TaskListArgs) -> TaskList:
        """``task.list``: a page of the caller's tasks (of one batch, or those submitted alone)."""
        if args.batch is not None:
            batch = self._own_batch(ctx.agent, args.batch)
            after = int(args.after.rsplit(".", 1)[1]) if args.after and "." in args.after else 0
            tasks: list[Doc] = []
            for page in self._store.batch_tasks(batch, after):
                tasks += [t for t in page if args.state is None or t["state"] == args.state.value]
                if len(tasks) >= args.limit:
                    break
            tasks = tasks[: args.limit]
        else:
            tasks = self._store.agent_tasks(ctx.agent, args.after, args.limit)
            tasks = [t for t in tasks if args.state is None or t["state"] == args.state.value]
        more = len(tasks) == args.limit
        return TaskList(tasks=[info(t) for t in tasks], next=tasks[-1]["_id"] if more and tasks else None)

    # -- batches -----------------------------------------------------------------

    def batch_submit(self, ctx: CallContext, args: BatchSubmitArgs) -> BatchInfo:
        """``batch.submit``: store and queue a batch of tasks (once per message id)."""
        priority = self._program_allowed(ctx.agent, args.program, args.priority)
        batch_id = "b-" + hashlib.sha256(f"{ctx.agent}\0{ctx.call_id}".encode()).hexdigest()[:16]
        if self._store.batch(batch_id) is None:
            doc = new_batch(batch_id, ctx.agent, args.program, args.name, priority, args.max_concurrent)
            self._store.create_batch({**doc, "deadline": args.deadline}, total=len(args.tasks), submitted=True)
        docs = [
            task_doc(
                batch_task_id(batch_id, line),
                ctx.agent,
                args.program,
                task.input,
                min(task.priority if task.priority is not None else priority, priority),
                args.deadline,
                batch=batch_id,
            )
            for line, task in enumerate(args.tasks, start=1)
        ]
        self._store.insert_many(docs)
        for doc in docs:  # run again after a crash: a task's second message is skipped by task.start
            self._publish(doc["_id"], int(doc["priority"]))
        return batch_info(self._batch(batch_id))

    def batch_get(self, ctx: CallContext, args: BatchRef) -> BatchInfo:
        """``batch.get``: a batch and its counts."""
        return batch_info(self._own_batch(ctx.agent, args.id))

    def batch_cancel(self, ctx: CallContext, args: BatchRef) -> BatchInfo:
        """``batch.cancel``: running tasks stop now; queued ones are cancelled as runners take them.

        One write however large the batch: its queued tasks wait in RabbitMQ, and
        ``task.start`` cancels each (instead of running it) when its message comes.
        """
        batch = self._own_batch(ctx.agent, args.id)
        if batch["state"] not in ("finished", "cancelled"):
            self._store.set_state(args.id, "cancelled")
        for task_id in self._leases.running_of(args.id):
            doc = self._store.get(task_id)
            if doc is not None:
                self.cancel_task(doc)
        return batch_info(self._batch(args.id))

    def batch_retry(self, ctx: CallContext, args: BatchRef) -> BatchInfo:
        """``batch.retry``: queue the batch's failed tasks again (their attempts count on)."""
        batch = self._own_batch(ctx.agent, args.id)
        for page in self._store.batch_tasks(batch, fields={"state": 1, "priority": 1}):
            for task in page:
                if task["state"] != TaskState.FAILED.value:
                    continue
                moved = self._store.transition(
                    task["_id"],
                    {"state": TaskState.FAILED.value},
                    {"$set": {"state": QUEUED, "finished_at": None, "output": None, "error": None}},
                )
                if moved is not None:
                    self._moved(moved, TaskState.FAILED.value, QUEUED)
                    self._publish(task["_id"], int(task.get("priority") or 0))
        if batch["state"] == "finished":
            self._store.set_state(args.id, "running")
        return batch_info(self._batch(args.id))

    # -- runners -----------------------------------------------------------------

    def start(self, ctx: CallContext, args: TaskStartArgs) -> TaskStart:
        """``task.start``: run the task under a new lease, skip its message, or wait and ask again."""
        self._runner(ctx.agent)
        doc = self._store.get(args.id)
        if doc is None:
            return TaskStart(action="skip", reason=f"no task {args.id!r}")
        state = doc["state"]
        if state not in (QUEUED, RUNNING):
            return TaskStart(action="skip", reason=f"the task is {state}")
        if doc.get("deadline") is not None and _aware(doc["deadline"]) < utcnow():
            expired = self._store.transition(
                args.id,
                {"state": state},
                {"$set": {"state": TaskState.EXPIRED.value, "finished_at": utcnow()}, "$unset": {"lease": ""}},
            )
            if expired is not None:
                self._leases.drop(args.id)
                self._moved(expired, state, TaskState.EXPIRED.value)
            return TaskStart(action="skip", reason="the task's deadline passed")
        if state == RUNNING:
            held = self._leases.get(args.id)
            if held is not None and held.live():
                wait = max(held.expires - time.monotonic(), 0.1)
                return TaskStart(action="wait", reason="another runner holds the task's lease", retry_after=wait)
        batch = self._store.start_settings(doc["batch"]) if state == QUEUED and doc.get("batch") else None
        if batch is not None and batch[0] == "cancelled":
            self.cancel_task(doc)
            return TaskStart(action="skip", reason="the task's batch was cancelled")
        if batch is not None and batch[1] is not None and self._leases.running_in(doc["batch"]) >= batch[1]:
            return TaskStart(action="wait", reason="the batch runs its max_concurrent tasks", retry_after=WAIT_SECONDS)
        return self._grant(ctx.agent, doc)

    def _grant(self, runner: str, doc: Doc) -> TaskStart:
        state = doc["state"]
        token = secrets.token_hex(16)
        now = utcnow()
        update: Doc = {
            "$set": {"state": RUNNING, "lease": {"runner": runner, "token": token}, "attempt_started_at": now},
            "$inc": {"attempts": 1},
        }
        if doc.get("started_at") is None:
            update["$set"]["started_at"] = now
        if state == RUNNING and doc.get("attempt_started_at") is not None:
            # Taken over: the abandoned attempt's time counts too.
            update["$inc"]["wall_ms"] = _ms(_aware(doc["attempt_started_at"]), now)
        guard: Doc = {"state": state, "lease.token": (doc.get("lease") or {}).get("token")}
        started = self._store.transition(doc["_id"], guard, update)
        if started is None:  # someone else moved it meanwhile: look again
            return TaskStart(action="wait", reason="the task changed meanwhile", retry_after=0.1)
        self._leases.grant(started, runner, token)
        self._moved(started, state if state == QUEUED else RUNNING, RUNNING)
        log.info("task_started", task=doc["_id"], runner=runner, attempt=started["attempts"])
        return TaskStart(
            action="run",
            lease=token,
            attempt=int(started["attempts"]),
            agent=started["agent"],
            program=started["program"],
            input=started.get("input"),
            priority=int(started.get("priority") or 0),
            deadline=started.get("deadline"),
        )

    def heartbeat(self, ctx: CallContext, args: TaskHeartbeatArgs) -> TaskHeartbeat:
        """``task.heartbeat``: renew the runner's leases; report the tasks it no longer holds."""
        self._runner(ctx.agent)
        lost = self._leases.renew(ctx.agent, args.leases)
        if args.runner_id is not None:
            self._store.runner_seen(args.runner_id, ctx.agent, args.capacity, len(args.leases), args.programs)
        return TaskHeartbeat(lost=lost, lease_seconds=self._leases.ttl)

    def finish(self, ctx: CallContext, args: TaskFinishArgs) -> TaskFinished:
        """``task.finish``: the first finish under the current lease wins; any later one gets the stored state."""
        self._runner(ctx.agent)
        final = TaskState.FAILED if args.error is not None else TaskState.SUCCEEDED
        now = utcnow()
        doc = self._store.get(args.id)
        if doc is None:
            raise NotFound(f"no task {args.id!r}")
        usage = args.usage.model_dump()
        wall = usage.pop("wall_ms", 0.0)
        if doc.get("attempt_started_at") is not None:
            wall = float(doc.get("wall_ms") or 0.0) + _ms(_aware(doc["attempt_started_at"]), now)
        done = self._store.transition(
            args.id,
            {"state": RUNNING, "lease.token": args.lease, "lease.runner": ctx.agent},
            {
                "$set": {
                    "state": final.value,
                    "output": args.output,
                    "error": args.error.model_dump() if args.error else None,
                    "usage": {**usage, "wall_ms": round(wall, 3)},
                    "finished_at": now,
                },
                "$unset": {"lease": ""},
            },
        )
        if done is None:
            current = self._store.get(args.id) or doc
            return TaskFinished(id=args.id, state=TaskState(current["state"]))
        self._leases.drop(args.id)
        self._moved(done, RUNNING, final.value, {**usage, "wall_ms": round(wall, 3)})
        log.info("task_finished", task=args.id, state=final.value, attempts=done.get("attempts"))
        return TaskFinished(id=args.id, state=final)

    # -- helpers -------------------------------------------------------------------

    def _moved(self, task: Doc, old: str, new: str, usage: Doc | None = None) -> None:
        metrics.TASKS.labels(new).inc()
        batch = task.get("batch")
        if batch and old != new:  # a takeover stays running
            self._store.count(batch, {old: -1, new: 1}, usage)

    def _runner(self, agent: str) -> None:
        standing = self._policies.standing(agent)
        if standing is None or not standing.policy.runner:
            raise Denied(f"{agent!r} is not a task runner (its policy needs runner: true)")

    def _program_allowed(self, agent: str, program: str, priority: int) -> int:
        standing = self._policies.standing(agent)
        if standing is None or not standing.policy.allows_program(program):
            raise Denied(f"the policy of {agent!r} does not allow the program {program!r}")
        return min(priority, standing.policy.max_priority)

    def _own(self, agent: str, task_id: str) -> Doc:
        doc = self._store.get(task_id)
        if doc is None or doc.get("agent") != agent:
            raise NotFound(f"no task {task_id!r} of {agent!r}")
        return doc

    def _own_batch(self, agent: str, batch_id: str) -> Doc:
        """The caller's batch (the operator's identity may act on any)."""
        doc = self._store.batch(batch_id)
        if doc is None or (doc.get("agent") != agent and not self._policies.is_operator(agent)):
            raise NotFound(f"no batch {batch_id!r} of {agent!r}")
        return doc

    def _batch(self, batch_id: str) -> Doc:
        doc = self._store.batch(batch_id)
        if doc is None:
            raise NotFound(f"no batch {batch_id!r}")
        return doc

    def batch_gauges(self) -> None:
        """Refresh the batches-by-state gauges (a periodic job: the counts come from the database)."""
        for state, n in self._store.batch_states().items():
            metrics.BATCHES.labels(state).set(n)

    def recount_batches(self) -> int:
        """At start, before serving: recount the unfinished batches from their tasks."""
        batches = self._store.batches_in(["submitting", "running"])
        for batch in batches:
            self._store.recount(batch)
        return len(batches)


def new_batch(
    batch_id: str, agent: str, program: str, name: str | None, priority: int, max_concurrent: int | None
) -> Doc:
    """A new batch document with no task yet (state ``submitting``)."""
    return {
        "_id": batch_id,
        "name": name,
        "agent": agent,
        "program": program,
        "state": "submitting",
        "counts": {state: 0 for state in STORED_COUNTS},
        "priority": priority,
        "max_concurrent": max_concurrent,
        "created_at": utcnow(),
        "finished_at": None,
        "usage": {},
    }


def info(doc: Doc) -> TaskInfo:
    """The wire form of a task document."""
    fields = {k: doc.get(k) for k in TaskInfo.model_fields if k != "id" and doc.get(k) is not None}
    return TaskInfo.model_validate({**fields, "id": doc["_id"]})


def batch_info(doc: Doc) -> BatchInfo:
    """The wire form of a batch document."""
    fields = {k: doc.get(k) for k in BatchInfo.model_fields if k != "id" and doc.get(k) is not None}
    return BatchInfo.model_validate({**fields, "id": doc["_id"]})


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _ms(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() * 1000.0
