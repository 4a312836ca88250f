"""Agent identities: least-privilege broker users proven by RabbitMQ, disable, rotate, remove."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pika
import pika.exceptions
import pytest
import yaml

from aiosd.daemon.access.policy import Policy, parse_policy
from aiosd.daemon.admin.management import agent_permissions
from aiosd.sdk import CallError, Client

from .harness import ROOT, AgentRegistry, SchedulerProcess, World, management
from .rawamqp import RawAgent


@pytest.fixture(scope="module")
def pair(registry: AgentRegistry, scheduler: SchedulerProcess) -> tuple[str, str]:
    """Two agents, alice and bob, with the default policy."""
    return registry.add("alice"), registry.add("bob")


def channel(url: str) -> tuple[pika.BlockingConnection, Any]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    return conn, conn.channel()


def refused(url: str, action: Callable[[Any], object]) -> pika.exceptions.ChannelClosedByBroker:
    """Run ``action`` on a fresh channel of ``url``; return the broker's refusal."""
    conn, ch = channel(url)
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            action(ch)
        return err.value
    finally:
        if conn.is_open:
            conn.close()


def test_add_creates_a_least_privilege_user_and_a_policy(
    shared_world: World, registry: AgentRegistry, pair: tuple[str, str]
) -> None:
    alice = registry.name("alice")
    with management() as api:
        user = api.get(f"/users/{alice}").json()
        perms = api.get(f"/permissions/{quote(shared_world.vhost, safe='')}/{alice}").json()
        other_vhosts = [p for p in api.get(f"/users/{alice}/permissions").json() if p["vhost"] != shared_world.vhost]
    assert user["tags"] in ("", [])  # no management, no impersonator
    assert {k: perms[k] for k in ("configure", "write", "read")} == agent_permissions(alice)
    assert other_vhosts == []
    doc = shared_world.db().agents.find_one({"_id": alice})
    assert doc is not None and doc["disabled"] is False and "memory.*" in doc["policy"]["syscalls"]
    assert "password" not in json.dumps(doc, default=str)  # the password is printed once, never stored

    listed = registry.cli("agents", "list", "--json")
    assert listed.returncode == 0 and alice in [a["name"] for a in json.loads(listed.stdout)]
    shown = registry.cli("agents", "show", alice)
    assert shown.returncode == 0 and "max_priority: 5" in shown.stdout and "enabled" in shown.stdout


@pytest.mark.parametrize("bad", ["Alice", "a", "has.dot", "9lives", "x" * 64, "sp ace"])
def test_invalid_names_are_refused(registry: AgentRegistry, bad: str) -> None:
    done = registry.cli("agents", "add", bad)
    assert done.returncode == 1 and "invalid agent name" in done.stderr


def test_existing_names_and_broker_users_are_refused(registry: AgentRegistry, pair: tuple[str, str]) -> None:
    again = registry.cli("agents", "add", registry.name("alice"))
    assert again.returncode == 1 and "already exists" in again.stderr
    guest = registry.cli("agents", "add", "guest")  # the broker's admin user: never taken over
    assert guest.returncode == 1 and "already exists" in guest.stderr
    bad_policy = registry.cli("agents", "add", registry.name("zed"), "--allow", "memroy.*")
    assert bad_policy.returncode == 1 and "matches no syscall" in bad_policy.stderr
    assert registry.cli("agents", "show", registry.name("nobody")).returncode == 1


def test_broker_refuses_another_agents_user_id(pair: tuple[str, str], registry: AgentRegistry) -> None:
    alice_url, _ = pair
    bob = registry.name("bob")

    def spoof(ch: Any) -> None:
        ch.confirm_delivery()
        ch.basic_publish("aiosd.ingress", "memory.add", b"{}", pika.BasicProperties(user_id=bob))

    err = refused(alice_url, spoof)
    assert err.reply_code == 406 and "user_id" in err.reply_text


def test_agent_cannot_use_other_queues_or_exchanges(pair: tuple[str, str], registry: AgentRegistry) -> None:
    alice_url, bob_url = pair
    bob_queue = f"aiosd.reply.{registry.name('bob')}.{uuid.uuid4().hex}"
    bob_conn, bob_ch = channel(bob_url)
    try:
        bob_ch.queue_declare(bob_queue, exclusive=False, auto_delete=True)  # bob may: it is his prefix
        bob_ch.basic_consume(bob_queue, lambda *a: None)
        cases: list[Callable[[Any], object]] = [
            lambda ch: ch.basic_consume(bob_queue, lambda *a: None),  # read bob's replies
            lambda ch: ch.basic_get(bob_queue),
            lambda ch: ch.queue_declare(f"aiosd.reply.{registry.name('bob')}.mine"),  # squat bob's prefix
            lambda ch: ch.basic_consume("aiosd.syscalls", lambda *a: None),  # read everyone's syscalls
            lambda ch: ch.queue_bind(_own_queue(ch, registry), "aiosd.ingress", "#"),  # tap the ingress exchange
            lambda ch: ch.exchange_declare("aiosd.evil", "fanout"),
        ]
        for action in cases:
            assert refused(alice_url, action).reply_code == 403
        for exchange, key in (("", bob_queue), ("aiosd.dead", "x"), ("amq.topic", "x")):

            def publish(ch: Any, exchange: str = exchange, key: str = key) -> None:
                ch.confirm_delivery()
                ch.basic_publish(exchange, key, b"{}", pika.BasicProperties(user_id=registry.name("alice")))

            assert refused(alice_url, publish).reply_code == 403
    finally:
        bob_conn.close()


def _own_queue(ch: Any, registry: AgentRegistry) -> str:
    name = f"aiosd.reply.{registry.name('alice')}.{uuid.uuid4().hex}"
    ch.queue_declare(name, exclusive=True)
    return name


def test_agent_works_through_the_sdk_and_cannot_redirect_replies(
    pair: tuple[str, str], registry: AgentRegistry
) -> None:
    alice_url, _ = pair
    with Client(alice_url, timeout=20) as client:
        assert client.agent == registry.name("alice")
        ref = client.memory.add("alice's first note")
        assert client.memory.get(ref.id).owner == registry.name("alice")
    agent = RawAgent(alice_url, user=registry.name("alice"))
    try:
        body = json.dumps({"syscall": "memory.add", "args": {"content": "to bob's queue"}}).encode()
        props = pika.BasicProperties(
            message_id="redirect-1",
            user_id=registry.name("alice"),
            content_type="application/json",
            reply_to=f"aiosd.reply.{registry.name('bob')}.x",
        )
        agent.ch.basic_publish("aiosd.ingress", "memory.add", body, props)
        reply = agent.call("memory.add", {"content": "a normal call still works"})
        assert reply["status"] == "ok"
    finally:
        agent.close()
    rec = registry.world.db().audit.find_one({"message_id": "redirect-1"})
    assert rec is not None and rec["code"] == "invalid_request" and "reply_to" in rec["reason"]


def test_unregistered_identity_is_denied_by_default(
    shared_world: World, registry: AgentRegistry, scheduler: SchedulerProcess
) -> None:
    name = registry.name("stranger")
    with management() as api:  # a broker user aiosd never registered
        api.put(f"/users/{name}", json={"password": "pw", "tags": ""}).raise_for_status()
        api.put(
            f"/permissions/{quote(shared_world.vhost, safe='')}/{name}", json=agent_permissions(name)
        ).raise_for_status()
    registry.names.append(name)
    with Client(shared_world.amqp_url(name, "pw"), timeout=20) as client, pytest.raises(CallError) as err:
        client.memory.add("hello?")
    assert err.value.code == "denied" and "no policy" in err.value.message


def test_disable_takes_effect_immediately(registry: AgentRegistry, scheduler: SchedulerProcess) -> None:
    url = registry.add("dora")
    name = registry.name("dora")
    with Client(url, timeout=20) as client:
        client.memory.add("before")
        assert registry.cli("agents", "disable", name).returncode == 0
        with pytest.raises(CallError) as err:
            client.memory.add("after")  # the very next call, same connection
        assert err.value.code == "denied" and "disabled" in err.value.message
        assert err.value.reply is not None and err.value.reply.status.value == "denied"
        assert registry.cli("agents", "enable", name).returncode == 0
        client.memory.add("enabled again")


def test_rotate_stops_the_old_password(registry: AgentRegistry, scheduler: SchedulerProcess) -> None:
    old_url = registry.add("rita")
    old_conn = pika.BlockingConnection(pika.URLParameters(old_url))
    done = registry.cli("agents", "rotate", registry.name("rita"), "--json")
    assert done.returncode == 0, done.stderr
    new_url = json.loads(done.stdout)["url"]
    assert new_url != old_url
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika.URLParameters(old_url))
    with pytest.raises(pika.exceptions.AMQPError):  # the open connection was closed by rotate
        for _ in range(50):
            old_conn.process_data_events(0.1)
            old_conn.channel()
    with Client(new_url, timeout=20) as client:
        client.memory.add("with the new password")


def test_remove_deletes_user_and_policy_but_keeps_the_audit(shared_world: World, registry: AgentRegistry) -> None:
    registry.add("remy")
    name = registry.name("remy")
    assert registry.cli("agents", "remove", name).returncode == 1  # asks; no tty answers
    done = registry.cli("agents", "remove", name, "--yes")
    assert done.returncode == 0, done.stderr
    with management() as api:
        assert api.get(f"/users/{name}").status_code == 404
    assert shared_world.db().agents.find_one({"_id": name}) is None
    reasons = [r["reason"] for r in shared_world.db().audit.find({"agent": name, "decision": "admin"})]
    assert reasons[0] == "added" and reasons[-1] == "removed"


def test_readme_policy_example_is_valid_and_defaults_match() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Agents, policies and audit") :]
    example = section[section.index("```yaml") + len("```yaml") :]
    policy = parse_policy(yaml.safe_load(example[: example.index("```")]))
    assert policy.grants[0].agent == "bob" and policy.approval_required == ["memory.delete"]
    defaults = Policy()
    assert (defaults.max_priority, defaults.tokens_per_period, defaults.requests_per_period) == (5, 200_000, 50_000)
    assert defaults.rate_limit is not None and (defaults.rate_limit.requests, defaults.rate_limit.seconds) == (600, 60)
    assert (defaults.max_concurrent_llm, defaults.memory_notes, defaults.memory_bytes) == (4, 10_000, 64 * 2**20)


def test_weight_is_set_from_the_command_line_and_checked(registry: AgentRegistry, shared_world: World) -> None:
    name = registry.name("weighted")
    assert registry.cli("agents", "add", name, "--weight", "2.5").returncode == 0
    doc = shared_world.db().agents.find_one({"_id": name})
    assert doc is not None and doc["policy"]["weight"] == 2.5
    assert registry.cli("agents", "policy", "set", name, "--weight", "4").returncode == 0
    doc = shared_world.db().agents.find_one({"_id": name})
    assert doc is not None and doc["policy"]["weight"] == 4.0
    refused = registry.cli("agents", "policy", "set", name, "--weight", "0")
    assert refused.returncode == 2 and "--weight" in refused.stderr
