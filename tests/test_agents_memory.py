"""Memory isolation between agents, sharing by grant or group, and revocation taking effect."""

from __future__ import annotations

import pytest

from aiosd.sdk import CallError, Client

from .harness import AgentRegistry

# Every test here talks to agents through a running scheduler.
pytestmark = pytest.mark.usefixtures("scheduler")


def code_of(fn: object, *args: object, **kw: object) -> str:
    with pytest.raises(CallError) as err:
        fn(*args, **kw)  # type: ignore[operator]
    return err.value.code


def set_policy(registry: AgentRegistry, short: str, *flags: str) -> None:
    done = registry.cli("agents", "policy", "set", registry.name(short), *flags)
    assert done.returncode == 0, done.stderr


def test_isolation_then_grant_then_revoke(registry: AgentRegistry) -> None:
    alice_url, bob_url = registry.add("alice"), registry.add("bob")
    alice, bob = registry.name("alice"), registry.name("bob")
    with Client(alice_url, timeout=20) as a, Client(bob_url, timeout=20) as b:
        secret = a.memory.add("alice's launch codes are 1234", tags=["secret"])
        b.memory.add("bob's grocery list")

        # Isolated: bob can neither read, search, change nor delete alice's note.
        assert code_of(b.memory.get, secret.id) == "not_found"
        assert code_of(b.memory.search, "launch codes", owner=alice) == "denied"
        assert all(h.owner == bob for h in b.memory.search("launch codes").results)
        assert code_of(b.memory.update, secret.id, content="pwned") == "not_found"
        assert code_of(b.memory.delete, secret.id) == "not_found"
        assert a.memory.get(secret.id).content == "alice's launch codes are 1234"

        # Alice's policy grants bob read access: effective on bob's next call.
        set_policy(registry, "alice", "--grant", bob)
        note = b.memory.get(secret.id)
        assert (note.owner, note.content) == (alice, "alice's launch codes are 1234")
        hits = b.memory.search("launch codes", owner=alice).results
        assert [h.id for h in hits] == [secret.id]
        # Read-only: the grant does not let bob change or delete it.
        assert code_of(b.memory.update, secret.id, content="pwned") == "not_found"
        assert code_of(b.memory.delete, secret.id) == "not_found"
        # A grant is one-way: alice still cannot read bob's memory.
        assert code_of(a.memory.search, "grocery", owner=bob) == "denied"

        # Revoked: the very next read fails again.
        set_policy(registry, "alice", "--grant", "none")
        assert code_of(b.memory.get, secret.id) == "not_found"
        assert code_of(b.memory.search, "launch codes", owner=alice) == "denied"
        assert a.memory.get(secret.id).content == "alice's launch codes are 1234"


def test_shared_group_reads_and_leaving_it(registry: AgentRegistry) -> None:
    carol_url = registry.add("carol", "--group", "research")
    dave_url = registry.add("dave", "--group", "research")
    erin_url = registry.add("erin", "--group", "sales")
    carol = registry.name("carol")
    with Client(carol_url, timeout=20) as c, Client(dave_url, timeout=20) as d, Client(erin_url, timeout=20) as e:
        paper = c.memory.add("radix attention shares prefixes", tags=["paper"])
        assert d.memory.get(paper.id).owner == carol
        assert [h.id for h in d.memory.search("radix prefixes", owner=carol).results] == [paper.id]
        assert code_of(e.memory.get, paper.id) == "not_found"  # another group
        assert code_of(e.memory.search, "radix", owner=carol) == "denied"
        assert code_of(d.memory.delete, paper.id) == "not_found"  # groups share reads only

        set_policy(registry, "dave", "--group", "none")  # dave leaves the group
        assert code_of(d.memory.get, paper.id) == "not_found"
