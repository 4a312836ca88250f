"""The composition root: one function builds the scheduler's object graph.

Objects are built in dependency order, each given its collaborators and the
few settings it needs; nothing is patched in afterwards. Cycles of the old
kind (the pipeline hands work to leasing, leasing finishes calls through the
pipeline) are cut by shared pieces built first: :class:`Completion` (how every
call ends), the :class:`LiveOutbox` (the current connection) and the
dispatcher's wake-up event.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from aiosd.daemon.access.authorizer import Meter, PolicyAuthorizer, PolicyLookup
from aiosd.daemon.access.counters import COUNTERS, Counters
from aiosd.daemon.access.directory import AGENTS, Directory
from aiosd.daemon.audit.chain import AuditLog
from aiosd.daemon.leasing.book import LeaseBook
from aiosd.daemon.leasing.caps import LlmCaps
from aiosd.daemon.leasing.dispatcher import Dispatcher
from aiosd.daemon.leasing.fairshare import policy_weights
from aiosd.daemon.leasing.fleet import Fleet
from aiosd.daemon.leasing.ordering import make_ordering
from aiosd.daemon.leasing.routing import make_router
from aiosd.daemon.leasing.tuning import Tuning
from aiosd.daemon.leasing.work import LeasedWork
from aiosd.daemon.pipeline.approvals import APPROVALS, Approvals
from aiosd.daemon.pipeline.flow import Completion, Pipeline
from aiosd.daemon.pipeline.intake import ANONYMOUS, Intake
from aiosd.daemon.pipeline.kernel import Kernel
from aiosd.daemon.pipeline.records import Records
from aiosd.daemon.pipeline.recovery import Recovery
from aiosd.daemon.runtime.periodic import Periodic
from aiosd.daemon.runtime.presence import PRESENCE_INTERVAL, Presence
from aiosd.daemon.runtime.threads import SyscallThreads
from aiosd.daemon.services.memory.guard import PolicyMemoryGuard
from aiosd.daemon.services.memory.service import MemoryService
from aiosd.daemon.services.sessions import SessionService
from aiosd.daemon.services.storage.guard import PolicyStorageGuard
from aiosd.daemon.services.storage.service import STORAGE_SWEEP_INTERVAL, StorageService
from aiosd.daemon.services.tasks.leases import TaskLeases
from aiosd.daemon.services.tasks.service import TaskService
from aiosd.daemon.services.tasks.store import TaskStore
from aiosd.daemon.services.tools import ToolService
from aiosd.daemon.store import Store
from aiosd.daemon.transport.outbox import LiveOutbox
from aiosd.sdk.cluster import SCHEDULERS_COLLECTION
from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.process.settings import Settings
from aiosd.sdk.registry import ToolRegistry

log = get_logger(__name__)

#: Seconds between sweeps for blobs of writes that crashed mid-way (the first runs at start).
ORPHAN_INTERVAL = 600.0
#: Seconds between prunes of ended counter windows.
PRUNE_INTERVAL = 60.0
#: Seconds a sent reply's live record may wait to be retired with others.
RETIRE_INTERVAL = 0.25
#: Seconds finished LLM calls' tokens (and requests against counters without a limit) may wait to be
#: counted together; unused request blocks are given back on the same beat (see :mod:`aiosd.daemon.access.allowance`).
CHARGE_INTERVAL = 0.2
#: Seconds the audit chain's head hint may lag behind its records.
HEAD_INTERVAL = 0.5
#: Seconds between refreshes of the batches-by-state metric.
BATCH_GAUGE_INTERVAL = 15.0
#: Seconds the lease book's transitions may wait to be written with others (dispatch rounds write too).
JOURNAL_INTERVAL = 0.2
#: Seconds between tries to commit replies that a store outage held back (see :mod:`aiosd.daemon.leasing.endings`).
PARKED_INTERVAL = 1.0


def scheduler_user(amqp_url: str) -> str:
    """The broker user an AMQP URL logs in as (``guest`` when it names none)."""
    return unquote(urlsplit(amqp_url).username or "guest")


def trusted_agents(settings: Settings) -> frozenset[str]:
    """Agents that need no policy document: see :class:`~aiosd.daemon.access.authorizer.PolicyLookup`."""
    trusted = {scheduler_user(settings.amqp_url)} if settings.trust_scheduler_user else set()
    if settings.dev_allow_anonymous:
        trusted.add(ANONYMOUS)
    return frozenset(trusted)


def audit_key(settings: Settings) -> bytes | None:
    """The HMAC key of the audit chain, if one is configured."""
    return settings.audit_key.get_secret_value().encode() if settings.audit_key else None


@dataclass(frozen=True)
class SchedulerGraph:
    """What the scheduler's loop drives; everything else hangs off these."""

    store: Store
    threads: SyscallThreads
    outbox: LiveOutbox
    pipeline: Pipeline
    recovery: Recovery
    completion: Completion
    leased: LeasedWork
    dispatcher: Dispatcher
    housekeeping: Periodic
    counters: Counters
    audit: AuditLog
    meter: Meter
    tasks: TaskService
    presence: Presence


def build_scheduler(settings: Settings) -> SchedulerGraph:
    """Build every object of one scheduler, in dependency order (no I/O happens here)."""
    store = Store(settings.mongo_url, settings.mongo_db, timeout=min(settings.connect_timeout, 5.0))
    threads = SyscallThreads(settings.threads)
    outbox = LiveOutbox()

    # access control and audit
    policies = PolicyLookup(Directory(store.db[AGENTS]), trusted_agents(settings))
    counters = Counters(store.db[COUNTERS])
    meter = Meter(counters, policies)
    audit = AuditLog(store.audit, key=audit_key(settings), lazy_head=True)

    # kernel services
    tools = ToolService(ToolRegistry.load(), policies)
    sessions = SessionService(store.sessions)
    memory = MemoryService(store.memory, PolicyMemoryGuard(policies, counters))
    storage = StorageService(store.db, PolicyStorageGuard(policies, counters))
    records = Records(store.syscalls, store.results)
    task_store = TaskStore(store.db)
    task_leases = TaskLeases(task_store, settings.task_lease_ttl)
    tasks = TaskService(task_store, task_leases, policies, outbox.publish_task)
    kernel = Kernel(records, memory, sessions, storage, tools, tasks)

    # the life of a syscall, and leased work
    completion = Completion(records, audit, outbox, threads.submit)
    approvals = Approvals(
        store.syscalls,
        store.db[APPROVALS],
        audit,
        policies,
        settings.approval_timeout,
        outbox=outbox,
        irreversible=tools.irreversible,
    )
    intake = Intake(
        max_body_bytes=settings.max_body_bytes,
        allow_anonymous=settings.dev_allow_anonymous,
        authorizer=PolicyAuthorizer(policies, meter, tools.irreversible),
        checks={"tool.call": tools.check},
        leases=task_leases,
    )
    wakeup = threading.Event()
    tuning = Tuning.of(settings)
    ordering = make_ordering(settings.policy, settings.slice_tokens, tuning, policy_weights(policies))
    book = LeaseBook(store.syscalls, ordering.key, charge=ordering.charge)
    leased = LeasedWork(
        book,
        Fleet(store.workers, settings.worker_timeout),
        store.usage,
        sessions,
        completion.finish_many,
        wakeup,
        lease_ttl=settings.lease_ttl,
        max_attempts=settings.max_attempts,
        on_usage=meter.charge_tokens,
        may_retry=tools.may_retry,
    )
    pipeline = Pipeline(intake, records, audit, kernel, completion, outbox, leased, approvals, memory.recount)
    recovery = Recovery(records, completion, pipeline.execute, approvals, recount=memory.recount)
    dispatcher = Dispatcher(
        leased,
        ordering,
        make_router(settings.routing, settings.affinity_slack, tuning),
        outbox.publish_lease,
        wakeup,
        lease_ttl=settings.lease_ttl,
        caps=LlmCaps(policies, book.llm_calls_held),
    )

    housekeeping = Periodic(threads.submit)
    presence = Presence(store.db[SCHEDULERS_COLLECTION], settings)
    housekeeping.every(PRESENCE_INTERVAL, "presence", presence.beat)
    housekeeping.every(BATCH_GAUGE_INTERVAL, "batch_gauges", tasks.batch_gauges)

    def settle_approvals() -> None:
        if approvals.settle(pipeline.execute, completion.finish):
            log.info("approvals_settled")

    housekeeping.every(settings.approval_poll, "approvals", settle_approvals)
    housekeeping.every(PRUNE_INTERVAL, "prune_counters", counters.prune)
    housekeeping.every(RETIRE_INTERVAL, "retire_records", completion.retire)
    housekeeping.every(JOURNAL_INTERVAL, "lease_journal", book.flush)
    housekeeping.every(PARKED_INTERVAL, "parked_replies", leased.retry_parked)
    housekeeping.every(HEAD_INTERVAL, "audit_head", audit.advance_head)
    housekeeping.every(CHARGE_INTERVAL, "counts", meter.settle)
    housekeeping.every(CHARGE_INTERVAL, "usage_totals", leased.totals.write)
    housekeeping.every(STORAGE_SWEEP_INTERVAL, "storage_sweep", storage.sweep)
    housekeeping.every(ORPHAN_INTERVAL, "storage_orphans", storage.sweep_orphans)
    return SchedulerGraph(
        store,
        threads,
        outbox,
        pipeline,
        recovery,
        completion,
        leased,
        dispatcher,
        housekeeping,
        counters,
        audit,
        meter,
        tasks,
        presence,
    )
