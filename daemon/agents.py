"""Agents: broker identities plus one policy document each.

The ``agents`` collection holds one small document per agent (``_id`` = the
name = the broker user): its policy, whether it is disabled, and a revision
that changes on every write. The scheduler reads it by ``_id`` on every
syscall, so a change (disable, a new policy, a removed grant) applies to the
very next call; only the parsed form is cached, keyed by that revision.
"""

from __future__ import annotations

import getpass
import secrets
import threading
import uuid
from dataclasses import dataclass

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from aiosd.sdk.protocol import utcnow

from .audit import AuditLog, Decision
from .brokeradmin import BrokerAdmin, agent_url
from .counters import Counters
from .errors import AccessError, AgentExists, AgentNotFound
from .policy import Policy, validate_agent_name
from .store import Doc

AGENTS = "agents"


@dataclass(frozen=True)
class Standing:
    """An agent's current policy and whether it is disabled."""

    policy: Policy
    disabled: bool = False


@dataclass(frozen=True)
class Credentials:
    """What ``agents add``/``rotate`` print once: the password is not stored anywhere."""

    agent: str
    password: str
    url: str


class Directory:
    """The ``agents`` collection."""

    def __init__(self, collection: Collection[Doc]) -> None:
        self._col = collection
        self._parsed: dict[str, tuple[str, Policy]] = {}
        self._lock = threading.Lock()

    def standing(self, name: str) -> Standing | None:
        """The agent's policy and state, read now; ``None`` if it is not registered."""
        doc = self._col.find_one({"_id": name}, {"policy": 1, "disabled": 1, "rev": 1})
        if doc is None:
            return None
        rev = str(doc.get("rev"))
        with self._lock:
            cached = self._parsed.get(name)
        if cached is None or cached[0] != rev:
            # Validated on write; validating again protects against hand-edited documents.
            cached = (rev, Policy.model_validate(doc.get("policy") or {}))
            with self._lock:
                self._parsed[name] = cached
        return Standing(cached[1], bool(doc.get("disabled")))

    def get(self, name: str) -> Doc:
        """The agent's document; raise :class:`AgentNotFound`."""
        doc = self._col.find_one({"_id": name})
        if doc is None:
            raise AgentNotFound(f"no agent {name!r} (see `aiosd agents list`)")
        return doc

    def all(self) -> list[Doc]:
        """Every agent document, by name."""
        return list(self._col.find({}).sort("_id", 1))

    def create(self, name: str, policy: Policy, external: bool) -> None:
        """Register ``name``; raise :class:`AgentExists` if it is registered already."""
        now = utcnow()
        doc = {"_id": name, "policy": policy.model_dump(mode="json"), "disabled": False, "external": external,
               "rev": uuid.uuid4().hex, "created_at": now, "updated_at": now}
        try:
            self._col.insert_one(doc)
        except DuplicateKeyError as exc:
            raise AgentExists(f"agent {name!r} already exists") from exc

    def update(self, name: str, fields: Doc) -> None:
        """Set ``fields`` on the agent's document (new revision); raise :class:`AgentNotFound`."""
        changes = {**fields, "rev": uuid.uuid4().hex, "updated_at": utcnow()}
        if self._col.update_one({"_id": name}, {"$set": changes}).matched_count == 0:
            raise AgentNotFound(f"no agent {name!r} (see `aiosd agents list`)")

    def delete(self, name: str) -> None:
        """Forget the agent's document."""
        self._col.delete_one({"_id": name})


class AgentAdmin:
    """The operations behind ``aiosd agents``: each keeps broker, policy and audit in step."""

    def __init__(self, directory: Directory, broker: BrokerAdmin, counters: Counters, memory: Collection[Doc],
                 audit: AuditLog, amqp_url: str) -> None:
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
                self._broker.create_agent_user(name, password)
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
        self._audit.record(agent=name, syscall=None, message_id=None, decision=Decision.ADMIN,
                           reason=what, resource=f"agent:{name}")


def operator_name() -> str:
    """Who runs an operator command, for the audit log (``operator:<login>``)."""
    try:
        return f"operator:{getpass.getuser()}"
    except (KeyError, OSError):
        return "operator:unknown"
