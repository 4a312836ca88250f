"""The ``aiosd`` command line."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from aiosd.sdk.errors import EXIT_FAILURE, AiosdError
from aiosd.sdk.process.options import fail, load, settings_options


@click.group()
@click.version_option(package_name="aiosd")
def main() -> None:
    """aiosd: an operating-system kernel for LLM agents."""


@main.command()
@settings_options
@click.option("--prefetch", type=int, help="Unacked deliveries in flight (env AIOSD_PREFETCH).")
@click.option("--threads", type=int, help="Threads serving syscalls (env AIOSD_THREADS).")
@click.option("--batch-size", type=int, help="Deliveries committed together (env AIOSD_BATCH_SIZE).")
@click.option(
    "--batch-wait-ms",
    type=float,
    help="Longest wait of a batch gathering while another is served (env AIOSD_BATCH_WAIT_MS).",
)
@click.option("--shutdown-timeout", type=float, help="Seconds to finish in-flight work on SIGTERM.")
@click.option(
    "--dev-allow-anonymous",
    is_flag=True,
    default=None,
    help="DEVELOPMENT ONLY: accept messages without user_id as agent 'anonymous'.",
)
def scheduler(config_file: str | None, **overrides: Any) -> None:
    """Run the scheduler daemon (ingress, kernel services, replies)."""
    from aiosd.daemon.runtime.scheduler import Scheduler
    from aiosd.sdk.process.lifecycle import Lifecycle
    from aiosd.sdk.process.logs import configure_logging

    settings = load(config_file, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    lifecycle = Lifecycle()
    lifecycle.install_signal_handlers()
    try:
        Scheduler(settings, lifecycle).run()
    except AiosdError as exc:
        fail(exc)


@main.command()
@settings_options
@click.argument("call_id")
@click.option("--agent", help="Only the syscall of this agent.")
def result(config_file: str | None, call_id: str, agent: str | None, **overrides: Any) -> None:
    """Print the stored record and reply of syscall CALL_ID as JSON."""
    from aiosd.daemon.pipeline.records import Records
    from aiosd.daemon.store import Store

    settings = load(config_file, **overrides)
    store = Store(settings.mongo_url, settings.mongo_db)
    try:
        store.ping()
        docs = Records(store.syscalls, store.results).find_by_id(call_id, agent)
    except AiosdError as exc:
        fail(exc)
    finally:
        store.close()
    if not docs:
        click.echo(f"aiosd: no syscall with id {call_id!r}" + (f" from agent {agent!r}" if agent else ""), err=True)
        sys.exit(EXIT_FAILURE)
    shown = [{k: v for k, v in d.items() if k != "_id"} for d in docs]
    click.echo(json.dumps(shown[0] if len(shown) == 1 else shown, indent=2, default=str))


@main.command()
@click.option("--write", is_flag=True, help="Rewrite the committed schema files.")
@click.option("--check", is_flag=True, help="Exit 1 if the committed files are stale.")
def schema(write: bool, check: bool) -> None:
    """Print (or write/check) the protocol's JSON Schemas."""
    from aiosd.sdk import schema as schemas

    if write:
        for path in schemas.write():
            click.echo(f"wrote {path}")
    elif check:
        stale = schemas.stale()
        for name in stale:
            click.echo(f"stale: {name} (run `aiosd schema --write`)", err=True)
        sys.exit(1 if stale else 0)
    else:
        click.echo(json.dumps(schemas.generate(), indent=2))


@main.command()
@settings_options
@click.option("--agents", default=3, show_default=True, help="Sample agents to run.")
def demo(config_file: str | None, agents: int, **overrides: Any) -> None:
    """Start a scheduler if none is serving, drive sample agents through it, report."""
    from aiosd.daemon.admin.demo import run_demo

    settings = load(config_file, **overrides)
    try:
        code = run_demo(settings, agents)
    except AiosdError as exc:
        fail(exc)
    sys.exit(code)


def _register_worker() -> None:
    from aiosd.daemon.admin.batchcli import batch
    from aiosd.daemon.admin.runner import runner
    from aiosd.daemon.admin.tools import tools
    from aiosd.workers.cli import worker

    main.add_command(worker)
    main.add_command(tools)
    main.add_command(runner)
    main.add_command(batch)


_register_worker()


def _register_admin() -> None:
    from aiosd.daemon.admin.agents import agents
    from aiosd.daemon.admin.operator import approvals, approve, audit, deny
    from aiosd.daemon.admin.status import status
    from aiosd.daemon.admin.web.cli import web

    for command in (agents, approvals, approve, deny, audit, status, web):
        main.add_command(command)


_register_admin()

if __name__ == "__main__":
    main()
