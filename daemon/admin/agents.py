"""``aiosd agents``: create agents, set their policies, disable, rotate, remove."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
import yaml

from aiosd.daemon.access.counters import COUNTERS, Counters
from aiosd.daemon.access.directory import AGENTS, Directory
from aiosd.daemon.access.policy import Policy, load_policy_file, parse_policy
from aiosd.daemon.admin.identities import AgentAdmin, Credentials, open_admin
from aiosd.daemon.store import Doc, Store
from aiosd.sdk.errors import AiosdError
from aiosd.sdk.process.options import fail, load, settings_options

F = TypeVar("F", bound=Callable[..., Any])
#: Policy flags: option name -> (policy field, kind); kind "limit" takes an integer or "none".
POLICY_FLAGS: dict[str, tuple[str, str]] = {
    "allow": ("syscalls", "list"),
    "model": ("models", "list"),
    "program": ("programs", "list"),
    "tool": ("tools", "list"),
    "group": ("groups", "list"),
    "grant": ("grants", "grants"),
    "approve": ("approval_required", "list"),
    "max_priority": ("max_priority", "int"),
    "period": ("quota_period", "str"),
    "tokens": ("tokens_per_period", "limit"),
    "requests": ("requests_per_period", "limit"),
    "rate": ("rate_limit", "rate"),
    "max_llm": ("max_concurrent_llm", "limit"),
    "weight": ("weight", "float"),
    "memory_notes": ("memory_notes", "limit"),
    "memory_bytes": ("memory_bytes", "limit"),
    "storage_bytes": ("storage_bytes", "limit"),
    "storage_versions": ("storage_versions", "int"),
    "storage_file_bytes": ("storage_file_bytes", "limit"),
}


def policy_options(fn: F) -> F:
    """The flags that set policy fields (each overrides the file or current policy)."""
    options = [
        click.option("--policy", "policy_file", type=click.Path(dir_okay=False), help="Policy file (YAML or JSON)."),
        click.option(
            "--allow",
            multiple=True,
            help="Allowed syscall pattern, e.g. 'memory.*' (repeatable; 'none' for no syscall).",
        ),
        click.option("--model", multiple=True, help="Allowed model pattern (repeatable; '*' for any)."),
        click.option("--program", multiple=True, help="Agent program pattern tasks may run (repeatable; 'none')."),
        click.option(
            "--tool", multiple=True, help="Tool name pattern tool.call may run (repeatable; '*' any; 'none')."
        ),
        click.option("--max-priority", type=click.IntRange(0, 9), help="Higher priorities are lowered to this."),
        click.option("--period", type=click.Choice(["hour", "day", "month"]), help="Quota period."),
        click.option("--tokens", help="Tokens per period, or 'none' (unlimited)."),
        click.option("--requests", help="Requests per period, or 'none'."),
        click.option("--rate", help="Rate limit as REQUESTS/SECONDS (e.g. 600/60), or 'none'."),
        click.option("--max-llm", help="LLM calls on workers at once, or 'none'."),
        click.option(
            "--weight",
            type=click.FloatRange(0, 1000, min_open=True),
            help="Share of the LLM workers under the fair policy, relative to other agents' weights.",
        ),
        click.option("--memory-notes", help="Live memory notes, or 'none'."),
        click.option("--memory-bytes", help="Bytes of note content, or 'none'."),
        click.option("--storage-bytes", help="Bytes of every kept version of every file, or 'none'."),
        click.option("--storage-versions", type=click.IntRange(1, 1000), help="Versions kept per file."),
        click.option("--storage-file-bytes", help="Largest size of one file version, or 'none'."),
        click.option("--group", multiple=True, help="Group membership (repeatable; 'none' for no group)."),
        click.option("--grant", multiple=True, help="Agent allowed to read this agent's memory (repeatable; 'none')."),
        click.option(
            "--approve", multiple=True, help="Syscall pattern that needs a human approval (repeatable; 'none')."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_policy(base: Policy, flags: dict[str, Any]) -> Policy:
    """``base`` with the given flags applied, validated."""
    data = base.model_dump(mode="json")
    for flag, (field, kind) in POLICY_FLAGS.items():
        value = flags.get(flag)
        if value is None or value == ():
            continue
        data[field] = _flag_value(flag, kind, value)
    return parse_policy(data)


def _flag_value(flag: str, kind: str, value: Any) -> Any:
    if kind in ("list", "grants"):
        items = [] if list(value) == ["none"] else list(value)
        return [{"agent": a} for a in items] if kind == "grants" else items
    if kind in ("int", "float", "str"):
        return value
    if str(value).lower() in ("none", "unlimited"):
        return None
    if kind == "rate":
        requests, _, seconds = str(value).partition("/")
        if not (requests.isdigit() and (seconds or "60").isdigit()):
            raise click.BadParameter(f"{value!r}: use REQUESTS/SECONDS, e.g. 600/60", param_hint="--rate")
        return {"requests": int(requests), "seconds": int(seconds or 60)}
    if not str(value).isdigit():
        raise click.BadParameter(f"{value!r}: use a whole number or 'none'", param_hint=f"--{flag.replace('_', '-')}")
    return int(value)


def runner_policy() -> Policy:
    """A task runner's own policy: the runner syscalls, no quota of its own (its programs use their agents')."""
    return Policy(
        syscalls=["task.start", "task.heartbeat", "task.finish"],
        runner=True,
        tokens_per_period=None,
        requests_per_period=None,
        rate_limit=None,
    )


@contextmanager
def _admin(config_file: str | None, overrides: dict[str, Any]) -> Iterator[tuple[Store, AgentAdmin]]:
    settings = load(config_file, **overrides)
    store = Store(settings.mongo_url, settings.mongo_db)
    admin, broker = open_admin(store, settings)
    try:
        store.ping()
        yield store, admin
    except AiosdError as exc:
        fail(exc)
    finally:
        broker.close()
        store.close()


def _split(kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    flags = {k: kw.pop(k) for k in list(kw) if k in POLICY_FLAGS}
    return flags, kw


@click.group()
def agents() -> None:
    """Agents: broker identities with a policy each (deny by default)."""


@agents.command()
@settings_options
@click.argument("name")
@policy_options
@click.option(
    "--external", is_flag=True, help="The broker user exists and is managed elsewhere: only register a policy."
)
@click.option(
    "--runner",
    is_flag=True,
    help="A task runner (aiosd runner): may start tasks and act for their agents, and consume the task queue.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the credentials as JSON.")
def add(
    config_file: str | None,
    name: str,
    policy_file: str | None,
    external: bool,
    runner: bool,
    as_json: bool,
    **kw: Any,
) -> None:
    """Create agent NAME: a broker user with least privilege and its policy; print its credentials once."""
    flags, overrides = _split(kw)
    with _admin(config_file, overrides) as (_, admin):
        base = load_policy_file(policy_file) if policy_file else (runner_policy() if runner else Policy())
        policy = build_policy(base, flags)
        creds = admin.add(name, policy, external=external)
    if creds is None:
        click.echo(f"registered agent {name} (external broker user: no password was created)")
    else:
        _print_credentials(creds, as_json, "created")


@agents.command("list")
@settings_options
@click.option("--json", "as_json", is_flag=True)
def list_(config_file: str | None, as_json: bool, **overrides: Any) -> None:
    """List agents."""
    with _admin(config_file, overrides) as (store, _):
        docs = Directory(store.db[AGENTS]).all()
    if as_json:
        click.echo(json.dumps([_public(d) for d in docs], indent=2, default=str))
        return
    for d in docs:
        state = "disabled" if d.get("disabled") else "enabled"
        p = d.get("policy") or {}
        click.echo(
            f"{d['_id']:<24} {state:<9} syscalls={','.join(p.get('syscalls', []))} groups={','.join(p.get('groups', [])) or '-'}"
        )
    if not docs:
        click.echo("no agents (add one with `aiosd agents add NAME`)")


@agents.command()
@settings_options
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def show(config_file: str | None, name: str, as_json: bool, **overrides: Any) -> None:
    """Show agent NAME: state, policy and usage per period."""
    with _admin(config_file, overrides) as (store, _):
        doc = Directory(store.db[AGENTS]).get(name)
        counters = Counters(store.db[COUNTERS]).of_agent(name)
        lifetime = store.usage.find_one({"_id": name})
    view = {
        **_public(doc),
        "usage": [_usage(c) for c in counters if c.get("kind") != "rate"],
        "rate": [_usage(c) for c in counters if c.get("kind") == "rate"],
        "lifetime_llm": _usage(lifetime or {}),
    }
    if as_json:
        click.echo(json.dumps(view, indent=2, default=str))
        return
    click.echo(
        f"agent    {name}  ({'disabled' if doc.get('disabled') else 'enabled'}"
        f"{', external broker user' if doc.get('external') else ''})"
    )
    click.echo("policy:\n" + _indent(yaml.safe_dump(doc.get("policy") or {}, sort_keys=False)))
    click.echo("usage:" + ("" if view["usage"] else " none yet"))
    for c in view["usage"]:
        click.echo("  " + "  ".join(f"{k} {v}" for k, v in c.items()))
    if lifetime:
        click.echo("  lifetime LLM  " + "  ".join(f"{k} {v}" for k, v in _usage(lifetime).items()))


@agents.group()
def policy() -> None:
    """Read or replace an agent's policy."""


@policy.command("set")
@settings_options
@click.argument("name")
@policy_options
def policy_set(config_file: str | None, name: str, policy_file: str | None, **kw: Any) -> None:
    """Set NAME's policy from a file and/or flags (flags change the current policy); applies to its next call."""
    flags, overrides = _split(kw)
    with _admin(config_file, overrides) as (store, admin):
        if policy_file:
            base = load_policy_file(policy_file)
        else:
            base = Policy.model_validate(Directory(store.db[AGENTS]).get(name).get("policy") or {})
        admin.set_policy(name, build_policy(base, flags))
    click.echo(f"policy of {name} updated")


@policy.command("show")
@settings_options
@click.argument("name")
def policy_show(config_file: str | None, name: str, **overrides: Any) -> None:
    """Print NAME's policy as YAML (a valid policy file)."""
    with _admin(config_file, overrides) as (store, _):
        doc = Directory(store.db[AGENTS]).get(name)
    click.echo(yaml.safe_dump(doc.get("policy") or {}, sort_keys=False), nl=False)


@agents.command()
@settings_options
@click.argument("name")
def disable(config_file: str | None, name: str, **overrides: Any) -> None:
    """Disable NAME: every new syscall is denied from now on."""
    with _admin(config_file, overrides) as (_, admin):
        admin.set_disabled(name, True)
    click.echo(f"agent {name} disabled")


@agents.command()
@settings_options
@click.argument("name")
def enable(config_file: str | None, name: str, **overrides: Any) -> None:
    """Enable NAME again."""
    with _admin(config_file, overrides) as (_, admin):
        admin.set_disabled(name, False)
    click.echo(f"agent {name} enabled")


@agents.command()
@settings_options
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the credentials as JSON.")
def rotate(config_file: str | None, name: str, as_json: bool, **overrides: Any) -> None:
    """Give NAME a new password; its old password and open connections stop working."""
    with _admin(config_file, overrides) as (_, admin):
        creds = admin.rotate(name)
    _print_credentials(creds, as_json, "rotated")


@agents.command()
@settings_options
@click.argument("name")
@click.option("--purge", is_flag=True, help="Also delete the agent's memory notes.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def remove(config_file: str | None, name: str, purge: bool, yes: bool, **overrides: Any) -> None:
    """Remove NAME: its broker user, policy and counters (its audit records stay)."""
    if not yes and not click.confirm(f"remove agent {name}{' and its memory' if purge else ''}?"):
        sys.exit(1)
    with _admin(config_file, overrides) as (_, admin):
        admin.remove(name, purge=purge)
    click.echo(f"agent {name} removed")


def _print_credentials(creds: Credentials, as_json: bool, what: str) -> None:
    if as_json:
        click.echo(json.dumps({"agent": creds.agent, "password": creds.password, "url": creds.url}))
        return
    click.echo(f"agent {creds.agent} {what}. Its credentials are shown only now:")
    click.echo(f"  user      {creds.agent}\n  password  {creds.password}\n  url       {creds.url}")


def _public(doc: Doc) -> dict[str, Any]:
    return {"name": doc["_id"], **{k: v for k, v in doc.items() if k not in ("_id", "rev")}}


def _usage(doc: Doc) -> dict[str, Any]:
    skip = ("_id", "agent", "expires_at", "updated_at")
    return {k: v for k, v in doc.items() if k not in skip}


def _indent(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())
