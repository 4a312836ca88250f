"""Agent administration: broker users, policy documents and counters kept in step.

The operations behind ``aiosd agents`` (:class:`AgentAdmin`); each one is
audited under the operator's name.
"""

from __future__ import annotations

import getpass
import secrets
from dataclasses import dataclass

from pymongo.collection import Collection

from aiosd.daemon.access.counters import COUNTERS, Counters
from aiosd.daemon.access.directory import AGENTS, Directory
from aiosd.daemon.access.policy import Policy, validate_agent_name
from aiosd.daemon.admin.management import BrokerAdmin, agent_url, vhost_of
from aiosd.daemon.audit.chain import AuditLog, Decision
from aiosd.daemon.errors import AccessError, AgentExists
from aiosd.daemon.runtime.wiring import audit_key
from aiosd.daemon.store import Doc, Store
from aiosd.sdk.process.settings import Settings


@dataclass(frozen=True)
class Credentials:
    """What ``agents add``/``rotate`` print once: the password is not stored anywhere."""

    agent: str
    password: str
    url: str


class AgentAdmin:
    """The operations behind ``aiosd agents``: each keeps broker, policy and audit in step."""

    def __init__(
        self,
        directory: Directory,
        broker: BrokerAdmin,
        counters: Counters,
        memory: Collection[Doc],
        audit: AuditLog,
        amqp_url: str,
    ) -> None:
        self._dir = directory
        self._broker = broker
        self._counters = counters
        self._memory = memory
        self._audit = audit
        self._amqp_url = amqp_url

    def add(self, name: str, policy: Policy, external: bool = False) -> Credentials | None:
        """Register agent ``name``; create its broker user unless ``external`` (managed elsewhere)."""
        validate_agent_name(name)
        if not external and self._broker.user_exists(name):
            raise AgentExists(f"broker user {name!r} already exists; pick another name or add it with --external")
        self._dir.create(name, policy, external)
        creds = None
        if not external:
            password = secrets.token_urlsafe(24)
            try:
                self._broker.create_agent_user(name, password, runner=policy.runner)
            except Exception:
                self._dir.delete(name)  # no half-made agent: the name stays free
                raise
            creds = Credentials(name, password, agent_url(self._amqp_url, name, password))
        self._log(name, "added" + (" (external broker user)" if external else ""))
        return creds

    def set_policy(self, name: str, policy: Policy) -> None:
        """Replace the agent's policy (applies to its next syscall)."""
        self._dir.update(name, {"policy": policy.model_dump(mode="json")})
        self._log(name, "policy set: " + policy.model_dump_json(exclude_defaults=True))

    def set_disabled(self, name: str, disabled: bool) -> None:
        """Disable (every new syscall is denied) or re-enable an agent."""
        self._dir.update(name, {"disabled": disabled})
        self._log(name, "disabled" if disabled else "enabled")

    def rotate(self, name: str) -> Credentials:
        """Give the agent a new password and close its open connections (the old one stops working)."""
        doc = self._dir.get(name)
        if doc.get("external"):
            raise AccessError(f"agent {name!r} uses an external broker user: rotate its password where it is managed")
        password = secrets.token_urlsafe(24)
        self._broker.set_password(name, password)
        closed = self._broker.close_connections(name, "aiosd: credentials rotated")
        self._log(name, f"password rotated ({closed} connection(s) closed)")
        return Credentials(name, password, agent_url(self._amqp_url, name, password))

    def remove(self, name: str, purge: bool = False) -> None:
        """Delete the agent's broker user, policy and counters; with ``purge`` also its memory."""
        doc = self._dir.get(name)
        if not doc.get("external"):
            self._broker.delete_user(name)
        self._dir.delete(name)
        self._counters.forget(name)
        if purge:
            self._memory.delete_many({"agent": name})
        self._log(name, "removed" + (" with its memory" if purge else ""))

    def _log(self, name: str, what: str) -> None:
        self._audit.record(
            agent=name, syscall=None, message_id=None, decision=Decision.ADMIN, reason=what, resource=f"agent:{name}"
        )


def operator_name() -> str:
    """Who runs an operator command, for the audit log (``operator:<login>``)."""
    try:
        return f"operator:{getpass.getuser()}"
    except (KeyError, OSError):
        return "operator:unknown"


def open_admin(store: Store, settings: Settings) -> tuple[AgentAdmin, BrokerAdmin]:
    """The operator-side objects the CLI needs; the caller closes the :class:`BrokerAdmin`."""
    broker = BrokerAdmin(
        settings.amqp_admin_url,
        settings.amqp_admin_user,
        settings.amqp_admin_password.get_secret_value(),
        vhost_of(settings.amqp_url),
    )
    audit = AuditLog(store.audit, key=audit_key(settings), actor=operator_name())
    admin = AgentAdmin(
        Directory(store.db[AGENTS]), broker, Counters(store.db[COUNTERS]), store.memory, audit, settings.amqp_url
    )
    return admin, broker
