"""Agents: broker identities plus one policy document each.

The ``agents`` collection holds one small document per agent (``_id`` = the
name = the broker user): its policy, whether it is disabled, and a revision
that changes on every write. Every write also advances one counter, the
directory's revision (collection ``agents_revision``): the scheduler caches
standings and reads only that counter before it admits a batch of syscalls, so
a change (disable, a new policy, a removed grant, a removed agent) applies to
the next syscall sent after the change returned, without a read per syscall.

One read of the revision serves every batch admitted within
:data:`REVISION_GRACE` seconds of its start, and every write waits that long
after advancing the revision before it returns: a syscall sent after a write
returned is admitted on a read that started after the write, whichever host
made it.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from aiosd.daemon.access.policy import Policy
from aiosd.daemon.errors import AgentExists, AgentNotFound
from aiosd.daemon.store import Doc
from aiosd.sdk.protocol import utcnow

AGENTS = "agents"
#: The one document of ``agents_revision``.
REVISION_ID = "revision"
#: Seconds one read of the revision serves (the scheduler) and every write waits after it (the writers).
REVISION_GRACE = 0.05


@dataclass(frozen=True)
class Standing:
    """An agent's current policy and whether it is disabled."""

    policy: Policy
    disabled: bool = False


class Directory:
    """The ``agents`` collection."""

    def __init__(self, collection: Collection[Doc]) -> None:
        self._col = collection
        self._revision = collection.database[f"{collection.name}_revision"]
        self._parsed: dict[str, tuple[str, Policy]] = {}
        self._lock = threading.Lock()

    def revision(self) -> int:
        """The directory's revision: it changes whenever any agent document changes."""
        doc = self._revision.find_one({"_id": REVISION_ID})
        return int(doc["rev"]) if doc else 0

    def _bump(self) -> None:
        self._revision.update_one({"_id": REVISION_ID}, {"$inc": {"rev": 1}}, upsert=True)
        time.sleep(REVISION_GRACE)  # until no scheduler admits on a revision read that started before this write

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
        doc = {
            "_id": name,
            "policy": policy.model_dump(mode="json"),
            "disabled": False,
            "external": external,
            "rev": uuid.uuid4().hex,
            "created_at": now,
            "updated_at": now,
        }
        try:
            self._col.insert_one(doc)
        except DuplicateKeyError as exc:
            raise AgentExists(f"agent {name!r} already exists") from exc
        self._bump()

    def update(self, name: str, fields: Doc) -> None:
        """Set ``fields`` on the agent's document (new revision); raise :class:`AgentNotFound`."""
        changes = {**fields, "rev": uuid.uuid4().hex, "updated_at": utcnow()}
        if self._col.update_one({"_id": name}, {"$set": changes}).matched_count == 0:
            raise AgentNotFound(f"no agent {name!r} (see `aiosd agents list`)")
        self._bump()

    def delete(self, name: str) -> None:
        """Forget the agent's document."""
        self._col.delete_one({"_id": name})
        self._bump()
