"""The ``aiosd batch`` commands: submit, list, status, results, cancel, retry."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.text import Text

from aiosd.daemon.access.authorizer import PolicyLookup
from aiosd.daemon.access.directory import AGENTS, Directory
from aiosd.daemon.admin.batches import BatchAdmin, TaskPublisher, progress, write_results
from aiosd.daemon.runtime.wiring import trusted_agents
from aiosd.daemon.services.tasks.store import TaskStore
from aiosd.daemon.store import Store
from aiosd.sdk.client import Client
from aiosd.sdk.errors import EXIT_FAILURE, AiosdError, CallTimeout, ServiceUnavailable
from aiosd.sdk.process.options import fail, load, settings_options

FINAL_BATCH = ("finished", "cancelled")


@contextmanager
def _admin(
    config_file: str | None, overrides: dict[str, Any], publish: bool = False, scheduler: bool = False
) -> Iterator[BatchAdmin]:
    """A :class:`BatchAdmin` on the operator's settings, with a publisher and a scheduler client if needed."""
    settings = load(config_file, **overrides)
    store = Store(settings.mongo_url, settings.mongo_db)
    with ExitStack() as stack:
        stack.callback(store.close)
        try:
            store.ping()
            publisher = TaskPublisher(settings.amqp_url) if publish else None
            if publisher is not None:
                stack.callback(publisher.close)
            call = None
            if scheduler:
                client = stack.enter_context(Client(settings.amqp_url, timeout=settings.connect_timeout))
                call = client.call
            policies = PolicyLookup(Directory(store.db[AGENTS]), trusted_agents(settings))
            yield BatchAdmin(TaskStore(store.db), policies, publisher, call)
        except CallTimeout as exc:
            fail(ServiceUnavailable(f"the scheduler did not answer ({exc}): is it running?"))
        except AiosdError as exc:
            fail(exc)


@click.group()
def batch() -> None:
    """Batches: many tasks of one agent program, run overnight below interactive work."""


@batch.command()
@settings_options
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--program", required=True, help="The agent program every line runs (see `aiosd runner --list`).")
@click.option("--agent", required=True, help="The agent the tasks run as (its policy and quotas apply).")
@click.option("--priority", type=click.IntRange(0, 9), default=0, show_default=True, help="Default task priority.")
@click.option("--deadline", type=click.DateTime(), help="UTC time after which unstarted tasks expire.")
@click.option("--max-concurrent", type=click.IntRange(1, 100_000), help="Tasks of this batch running at once.")
@click.option("--name", help="A name to recognise the batch by.")
@click.option("--skip-invalid", is_flag=True, help="Submit the valid lines even if some are invalid.")
@click.option("--json", "as_json", is_flag=True, help="Print the submission as JSON.")
def submit(
    config_file: str | None,
    file: Path,
    program: str,
    agent: str,
    priority: int,
    deadline: datetime | None,
    max_concurrent: int | None,
    name: str | None,
    skip_invalid: bool,
    as_json: bool,
    **overrides: Any,
) -> None:
    """Submit FILE (JSONL, one task per line: {"input": ...}) as one batch."""
    from datetime import UTC

    from aiosd.sdk.programs import load_programs

    installed, _ = load_programs()
    if program not in installed:
        known = ", ".join(sorted(installed)) or "none"
        click.echo(f"aiosd: no program {program!r} is installed here (installed: {known})", err=True)
        sys.exit(EXIT_FAILURE)
    zoned = deadline.replace(tzinfo=UTC) if deadline is not None else None
    with _admin(config_file, overrides, publish=True) as admin:
        done = admin.submit(
            file,
            program,
            agent,
            priority=priority,
            deadline=zoned,
            max_concurrent=max_concurrent,
            name=name,
            skip_invalid=skip_invalid,
        )
    skipped = [{"line": line.number, "problem": line.problem} for line in done.skipped]
    if as_json:
        click.echo(json.dumps({"batch": done.batch, "tasks": done.tasks, "skipped": skipped}))
        return
    click.echo(f"submitted batch {done.batch}: {done.tasks} task(s) of {program} for {agent}")
    for s in skipped[:20]:
        click.echo(f"  skipped line {s['line']}: {s['problem']}", err=True)


@batch.command("list")
@settings_options
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def list_batches(config_file: str | None, limit: int, as_json: bool, **overrides: Any) -> None:
    """The newest batches and how far each has come."""
    with _admin(config_file, overrides) as admin:
        rows = [progress(b) for b in admin.store.recent_batches(limit)]
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=2))
        return
    if not rows:
        click.echo("no batch yet")
    for r in rows:
        label = f" ({r['name']})" if r["name"] else ""
        click.echo(f"{r['id']}{label}  {r['program']} for {r['agent']}  {r['state']}  {r['done']}/{r['total']} done")


@batch.command()
@settings_options
@click.argument("batch_id")
@click.option("--watch", is_flag=True, help="Refresh until the batch is finished (Ctrl-C stops watching).")
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between refreshes.")
@click.option("--json", "as_json", is_flag=True)
def status(
    config_file: str | None, batch_id: str, watch: bool, interval: float, as_json: bool, **overrides: Any
) -> None:
    """A batch's progress: done / failed / running / queued, tokens, throughput, ETA."""
    with _admin(config_file, overrides) as admin:
        figures = _figures(admin, batch_id)
        if as_json:
            click.echo(json.dumps(figures, default=str))
            return
        if not watch:
            _print_status(figures)
            return
        _watch(admin, batch_id, figures, interval)


def _figures(admin: BatchAdmin, batch_id: str) -> dict[str, Any]:
    found = admin.store.batch(batch_id)
    if found is None:
        click.echo(f"aiosd: no batch {batch_id!r}", err=True)
        sys.exit(EXIT_FAILURE)
    return progress(found)


def _line(f: dict[str, Any]) -> str:
    c = f["counts"]
    eta = f"ETA {f['eta_seconds']:.0f}s" if f["eta_seconds"] is not None else "ETA -"
    return (
        f"done {c['succeeded']}  failed {c['failed']}  running {c['running']}  queued {c['queued']}"
        f"  cancelled {c['cancelled']}  expired {c['expired']}  |  {f['tokens']} tokens"
        f"  {f['tasks_per_second']:.2f} tasks/s  {eta}"
    )


def _print_status(f: dict[str, Any]) -> None:
    label = f" ({f['name']})" if f["name"] else ""
    click.echo(f"batch {f['id']}{label}: {f['program']} for {f['agent']}, {f['state']}, {f['done']}/{f['total']}")
    click.echo(_line(f))


def _watch(admin: BatchAdmin, batch_id: str, figures: dict[str, Any], interval: float) -> None:
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} done")
    )
    shown = bar.add_task(f"{batch_id} {figures['program']}", total=max(figures["total"], 1))
    details = Text(_line(figures))
    with Live(Group(bar, details), console=Console(), refresh_per_second=4):
        while True:
            bar.update(shown, completed=figures["done"], total=max(figures["total"], 1))
            details.plain = _line(figures)
            if figures["state"] in FINAL_BATCH:
                break
            time.sleep(interval)
            figures = _figures(admin, batch_id)
    click.echo(f"batch {batch_id} {figures['state']}")


@batch.command()
@settings_options
@click.argument("batch_id")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--failed", "failed_only", is_flag=True, help="Only the failed tasks.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout.")
def results(
    config_file: str | None, batch_id: str, fmt: str, failed_only: bool, output: Path | None, **overrides: Any
) -> None:
    """Export a batch's results in line order (streamed: any size)."""
    with _admin(config_file, overrides) as admin:
        rows = admin.results(batch_id, failed_only)
        if output is None:
            write_results(rows, fmt, sys.stdout.write)
            return
        with output.open("w", encoding="utf-8", newline="") as handle:
            count = write_results(rows, fmt, handle.write)
    click.echo(f"wrote {count} result(s) to {output}", err=True)


@batch.command()
@settings_options
@click.argument("batch_id")
def cancel(config_file: str | None, batch_id: str, **overrides: Any) -> None:
    """Cancel a batch: its queued tasks never start, its running ones stop."""
    with _admin(config_file, overrides, scheduler=True) as admin:
        done = admin.cancel(batch_id)
    counts = done["counts"]
    click.echo(
        f"batch {batch_id} {done['state']}: {counts['cancelled']} task(s) cancelled so far;"
        f" its {counts['queued']} queued task(s) are cancelled as runners take them"
    )


@batch.command()
@settings_options
@click.argument("batch_id")
@click.option("--failed", "failed_only", is_flag=True, required=True, help="Queue the failed tasks again.")
def retry(config_file: str | None, batch_id: str, failed_only: bool, **overrides: Any) -> None:
    """Queue a batch's failed tasks again."""
    with _admin(config_file, overrides, scheduler=True) as admin:
        again, done = admin.retry_failed(batch_id)
    click.echo(f"batch {batch_id}: {again} failed task(s) queued again ({done['counts']['failed']} still failed)")
