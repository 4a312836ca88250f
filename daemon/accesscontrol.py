"""Access control as the scheduler wires it: one object holding every piece.

:class:`AccessControl` builds the policy lookup, counters, audit log,
authorizer, memory guard, LLM caps and approvals from the store and the
settings, so the scheduler needs a few lines to use them. The CLI builds the
same pieces for its commands (:func:`open_admin`).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel

from aiosd.sdk.protocol import Reply, Usage

from .access import Meter, Policies, PolicyAuthorizer
from .agents import AGENTS, AgentAdmin, Directory, operator_name
from .approvals import APPROVALS, Approvals
from .audit import AuditLog
from .brokeradmin import BrokerAdmin, vhost_of
from .counters import Counters
from .intake import ANONYMOUS
from .limits import LlmCaps, MemoryGuard
from .storageguard import PolicyStorageGuard
from .logs import get_logger
from .periodic import Periodic
from .records import Envelope
from .settings import Settings
from .store import Store

log = get_logger(__name__)

COUNTERS = "counters"
#: Seconds between prunes of ended counter windows.
PRUNE_INTERVAL = 60.0


def scheduler_user(amqp_url: str) -> str:
    """The broker user an AMQP URL logs in as (``guest`` when it names none)."""
    return unquote(urlsplit(amqp_url).username or "guest")


def trusted_agents(settings: Settings) -> frozenset[str]:
    """Agents that need no policy document: see :class:`~.access.Policies`."""
    trusted = {scheduler_user(settings.amqp_url)} if settings.trust_scheduler_user else set()
    if settings.dev_allow_anonymous:
        trusted.add(ANONYMOUS)
    return frozenset(trusted)


def audit_key(settings: Settings) -> bytes | None:
    """The HMAC key of the audit chain, if one is configured."""
    return settings.audit_key.get_secret_value().encode() if settings.audit_key else None


class AccessControl:
    """Policies, quotas, approvals and the audit log of one scheduler."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.settings = settings
        self.directory = Directory(store.db[AGENTS])
        self.policies = Policies(self.directory, trusted_agents(settings))
        self.counters = Counters(store.db[COUNTERS])
        self.audit = AuditLog(store.audit, key=audit_key(settings))
        self.meter = Meter(self.counters, self.policies)
        self.authorizer = PolicyAuthorizer(self.policies, self.meter)
        self.memory_guard = MemoryGuard(self.policies, self.counters)
        self.storage_guard = PolicyStorageGuard(self.policies, self.counters)
        self.llm_caps = LlmCaps(self.policies, store.syscalls)
        self.approvals = Approvals(store.syscalls, store.db[APPROVALS], self.audit, self.policies, settings.approval_timeout)

    def charge(self, agent: str, usage: Usage) -> None:
        """Account an LLM call's tokens to the agent's quota period."""
        self.meter.charge_tokens(agent, usage)

    def housekeeping(self, periodic: Periodic, execute: Callable[[Envelope, BaseModel], None],
                     finish: Callable[[Envelope, Reply], None]) -> None:
        """Register the approvals job and the counter prune."""
        def settle() -> None:
            if self.approvals.settle(execute, finish):
                log.info("approvals_settled")

        periodic.every(self.settings.approval_poll, "approvals", settle)
        periodic.every(PRUNE_INTERVAL, "prune_counters", self.counters.prune)

    def ensure_indexes(self) -> None:
        """Indexes of the access-control collections (idempotent)."""
        self.counters.ensure_indexes()


def open_admin(store: Store, settings: Settings) -> tuple[AgentAdmin, BrokerAdmin]:
    """The operator-side objects the CLI needs; the caller closes the :class:`BrokerAdmin`."""
    broker = BrokerAdmin(settings.amqp_admin_url, settings.amqp_admin_user,
                         settings.amqp_admin_password.get_secret_value(), vhost_of(settings.amqp_url))
    audit = AuditLog(store.audit, key=audit_key(settings), actor=operator_name())
    admin = AgentAdmin(Directory(store.db[AGENTS]), broker, Counters(store.db[COUNTERS]), store.memory,
                       audit, settings.amqp_url)
    return admin, broker
