"""Storage across agents with their own broker users: isolation, shares, groups, grants, revocation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from aiosd.sdk import CallError, Client

from .harness import AgentRegistry

# Every test here talks to agents through a running scheduler.
pytestmark = pytest.mark.usefixtures("scheduler")


def code(client: Client, syscall: str, args: dict[str, Any]) -> str:
    with pytest.raises(CallError) as err:
        client.call(f"storage.{syscall}", args)
    return err.value.code


def text(client: Client, path: str, owner: str | None = None) -> str:
    args = {"path": path} if owner is None else {"path": path, "owner": owner}
    return str(client.call("storage.read", args)["text"])


def test_isolation_share_write_share_and_unshare(registry: AgentRegistry) -> None:
    alice_url, bob_url = registry.add("alice"), registry.add("bob")
    alice, bob = registry.name("alice"), registry.name("bob")
    with Client(alice_url, timeout=30) as a, Client(bob_url, timeout=30) as b:
        a.call("storage.write", {"path": "/docs/plan.txt", "text": "alice's plan"})
        a.call("storage.write", {"path": "/docs-private/salary.txt", "text": "secret"})
        a.call("storage.write", {"path": "/diary.txt", "text": "dear diary"})

        # Isolated: bob's paths name bob's files, whatever they look like; naming alice needs a share.
        assert code(b, "read", {"path": "/docs/plan.txt"}) == "not_found"
        assert code(b, "read", {"path": f"/{alice}/docs/plan.txt"}) == "not_found"
        assert code(b, "read", {"path": f"{alice}:/docs/plan.txt"}) == "not_found"
        assert code(b, "read", {"path": "/docs/plan.txt", "owner": alice}) == "denied"
        assert code(b, "stat", {"path": "/docs/plan.txt", "owner": alice}) == "denied"
        assert code(b, "list", {"owner": alice}) == "denied"
        assert code(b, "write", {"path": "/docs/plan.txt", "text": "pwned", "owner": alice}) == "denied"
        assert code(b, "read", {"path": "/../" + alice + "/docs/plan.txt"}) == "invalid_args"
        assert code(b, "share", {"path": "/docs", "agent": "nobody-here"}) == "not_found"  # a typo, not a share

        # Read share of /docs: reads under /docs only (whole segments: not /docs-private), no writes.
        shares = a.call("storage.share", {"path": "/docs/", "agent": bob})["shares"]
        assert [(s["path"], s["agent"], s["mode"]) for s in shares] == [("/docs", bob, "read")]
        assert text(b, "/docs/plan.txt", owner=alice) == "alice's plan"
        assert b.call("storage.stat", {"path": "/docs/plan.txt", "owner": alice})["owner"] == alice
        assert [f["path"] for f in b.call("storage.list", {"owner": alice})["files"]] == ["/docs/plan.txt"]
        assert code(b, "read", {"path": "/docs-private/salary.txt", "owner": alice}) == "denied"
        assert code(b, "read", {"path": "/diary.txt", "owner": alice}) == "denied"
        assert code(b, "write", {"path": "/docs/plan.txt", "text": "pwned", "owner": alice}) == "denied"
        assert code(b, "delete", {"path": "/docs/plan.txt", "owner": alice}) == "denied"
        assert code(a, "read", {"path": "/anything", "owner": bob}) == "denied"  # a share is one-way

        # Write share: bob writes new versions into alice's namespace (counted against alice).
        a.call("storage.share", {"path": "/docs", "agent": bob, "mode": "write"})
        v2 = b.call("storage.write", {"path": "/docs/plan.txt", "text": "bob's edit", "owner": alice})
        assert (v2["owner"], v2["version"]) == (alice, 2)
        assert text(a, "/docs/plan.txt") == "bob's edit"
        history = a.call("storage.stat", {"path": "/docs/plan.txt"})["history"]
        assert [(h["version"], h["author"]) for h in history] == [(2, bob), (1, alice)]
        assert code(b, "write", {"path": "/diary.txt", "text": "pwned", "owner": alice}) == "denied"
        assert code(b, "share", {"path": "/docs", "agent": bob}) == "invalid_args"  # own namespace only
        assert text(a, "/diary.txt") == "dear diary"

        # Unshare revokes at once.
        assert a.call("storage.unshare", {"path": "/docs", "agent": bob})["shares"] == []
        assert code(b, "read", {"path": "/docs/plan.txt", "owner": alice}) == "denied"
        assert code(b, "write", {"path": "/docs/plan.txt", "text": "again", "owner": alice}) == "denied"
        assert code(a, "unshare", {"path": "/docs", "agent": bob}) == "not_found"


def test_group_share_and_policy_grant(registry: AgentRegistry, tmp_path: Path) -> None:
    owner_url = registry.add("owner")
    carol_url = registry.add("carol", "--group", "research")
    dave_url = registry.add("dave", "--group", "sales")
    owner, dave = registry.name("owner"), registry.name("dave")
    with Client(owner_url, timeout=30) as o, Client(carol_url, timeout=30) as c, Client(dave_url, timeout=30) as d:
        o.call("storage.write", {"path": "/papers/radix.txt", "text": "radix attention"})
        o.call("storage.write", {"path": "/ledger.txt", "text": "numbers"})
        o.call("storage.share", {"path": "/papers", "group": "research"})
        assert text(c, "/papers/radix.txt", owner=owner) == "radix attention"
        assert code(c, "read", {"path": "/ledger.txt", "owner": owner}) == "denied"
        assert code(d, "read", {"path": "/papers/radix.txt", "owner": owner}) == "denied"  # another group

        # An operator's policy grant with resources [storage] gives read access to every file, never writes.
        policy = {"grants": [{"agent": dave, "resources": ["storage"]}]}
        policy_file = tmp_path / "owner.yaml"
        policy_file.write_text(yaml.safe_dump(policy))
        done = registry.cli("agents", "policy", "set", owner, "--policy", str(policy_file))
        assert done.returncode == 0, done.stderr
        assert text(d, "/ledger.txt", owner=owner) == "numbers"
        assert len(d.call("storage.list", {"owner": owner})["files"]) == 2
        assert code(d, "write", {"path": "/ledger.txt", "text": "cooked", "owner": owner}) == "denied"

        # Leaving the group ends the group share.
        done = registry.cli("agents", "policy", "set", registry.name("carol"), "--group", "none")
        assert done.returncode == 0, done.stderr
        assert code(c, "read", {"path": "/papers/radix.txt", "owner": owner}) == "denied"
