"""What the agents' policies say about storage: grants, groups, limits and the byte quota.

The storage service asks this guard (see :class:`~.service.StorageGuard`);
shares made with ``storage.share`` live with the service itself. The quota
counts the bytes of every kept version of every file of an agent, in one
counter document (``<agent>:storage``) changed by the exact, serialised
updates of :class:`~aiosd.daemon.access.counters.Counters`.
"""

from __future__ import annotations

from aiosd.daemon.access.authorizer import PolicyLookup
from aiosd.daemon.access.counters import Counters
from aiosd.daemon.access.policy import Policy
from aiosd.daemon.errors import QuotaExceeded
from aiosd.daemon.services.storage.service import StorageLimits
from aiosd.daemon.store import Doc


def storage_key(agent: str) -> str:
    """The (never expiring) counter document of an agent's stored bytes."""
    return f"{agent}:storage"


class PolicyStorageGuard:
    """Answers the storage service from the agents' current policies and counters."""

    def __init__(self, policies: PolicyLookup, counters: Counters) -> None:
        self._policies = policies
        self._counters = counters

    def limits(self, owner: str) -> StorageLimits:
        """The owner's limits: versions kept per file, largest version, byte quota."""
        policy = self._policy(owner)
        return StorageLimits(
            versions=policy.storage_versions, file_bytes=policy.storage_file_bytes, quota=policy.storage_bytes
        )

    def grants_read(self, reader: str, owner: str) -> bool:
        """Whether ``owner``'s policy grants ``reader`` read access to all its files (an operator's grant)."""
        standing = self._policies.standing(owner)
        return standing is not None and standing.policy.grants_read(reader, "storage")

    def groups(self, agent: str) -> frozenset[str]:
        """The groups ``agent``'s policy puts it in."""
        standing = self._policies.standing(agent)
        return frozenset(standing.policy.groups) if standing is not None else frozenset()

    def known(self, agent: str) -> bool:
        """Whether ``agent`` is registered (shares to unknown agents are refused as typos)."""
        return self._policies.standing(agent) is not None

    def reserve(self, owner: str, nbytes: int) -> None:
        """Count ``nbytes`` more stored bytes; raise :class:`QuotaExceeded` past the quota."""
        limit = self._policy(owner).storage_bytes
        extra: Doc = {"agent": owner, "kind": "storage"}
        if self._counters.reserve(storage_key(owner), {"bytes": nbytes}, {"bytes": limit}, extra) is None:
            used = int((self._counters.get(storage_key(owner)) or {}).get("bytes") or 0)
            raise QuotaExceeded(
                f"storage quota exceeded: {used} of {limit} bytes are used by the kept versions of this "
                f"agent's files and this write needs {nbytes} more (purge files with storage.delete "
                f"purge=true, or ask for a larger storage_bytes or fewer storage_versions)"
            )

    def release(self, owner: str, nbytes: int) -> None:
        """Give back bytes of versions pruned or purged."""
        if nbytes:
            self._counters.add(storage_key(owner), {"bytes": -nbytes}, {"agent": owner, "kind": "storage"})

    def _policy(self, agent: str) -> Policy:
        standing = self._policies.standing(agent)
        # An agent without a policy never gets this far (intake denies it); be strict anyway.
        return standing.policy if standing is not None else Policy(storage_bytes=0)
