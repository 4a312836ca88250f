"""``aiosd status``: one screen with the health of the whole system; a monitoring check too.

Exit codes follow monitoring plugins: 0 healthy, 1 degraded (warnings), 2
unhealthy (critical problems); 69 when MongoDB cannot be reached and 78 for
invalid settings, as every ``aiosd`` command. The rules are in
:func:`aiosd.daemon.admin.overview.health` and ``docs/operating.md``.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from aiosd.daemon.admin.overview import CRITICAL, Observer
from aiosd.daemon.store import Doc, Store
from aiosd.sdk.errors import AiosdError
from aiosd.sdk.process.options import fail, load, settings_options

STATE_STYLE = {"up": "green", "draining": "yellow", "unhealthy": "red", "dead": "red", "stopped": "dim"}
HEALTH_STYLE = {"healthy": "bold green", "degraded": "bold yellow", "unhealthy": "bold red"}


@click.command()
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Print the overview as JSON (one line per refresh with --watch).")
@click.option("--watch", is_flag=True, help="Refresh until interrupted (Ctrl-C); the exit code is the last one's.")
@click.option(
    "--interval", type=click.FloatRange(0.2), default=2.0, show_default=True, help="Seconds between refreshes."
)
def status(config_file: str | None, as_json: bool, watch: bool, interval: float, **overrides: Any) -> None:
    """Scheduler, workers, runners, queues, backlog, leases, batches and agents; exit 0/1/2 by health."""
    settings = load(config_file, **overrides)
    store = Store(settings.mongo_url, settings.mongo_db)
    observer = Observer(store, settings)
    code = 0
    try:
        store.ping()
        code = _loop(observer, as_json, watch, interval)
    except AiosdError as exc:
        fail(exc)
    finally:
        observer.close()
        store.close()
    sys.exit(code)


def _loop(observer: Observer, as_json: bool, watch: bool, interval: float) -> int:
    view = observer.overview()
    if not watch:
        if as_json:
            click.echo(to_json(view))
        else:
            Console().print(render(view))
    elif as_json:
        view = _watch_json(observer, view, interval)
    else:
        view = _watch_screen(observer, view, interval)
    return int(view["health"]["exit_code"])


def _watch_json(observer: Observer, view: Doc, interval: float) -> Doc:
    """One JSON line per refresh until Ctrl-C; the last overview."""
    try:
        while True:
            click.echo(to_json(view, indent=None))
            time.sleep(interval)
            view = observer.overview()
    except KeyboardInterrupt:
        return view


def _watch_screen(observer: Observer, view: Doc, interval: float) -> Doc:
    """The screen redrawn in place until Ctrl-C; the last overview."""
    with Live(render(view), console=Console(), refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(interval)
                view = observer.overview()
                live.update(render(view))
        except KeyboardInterrupt:
            pass
    return view


def to_json(view: Doc, indent: int | None = 2) -> str:
    """The overview as JSON: datetimes in ISO 8601, priorities as string keys."""
    return json.dumps(view, indent=indent, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def render(view: Doc) -> RenderableType:
    """The overview as rich renderables, one table per concern (an empty one as one dim line)."""
    tables = [_schedulers(view["schedulers"]), _fleet(view["workers"]), _runners(view["runners"])]
    tables += [_queues(view), _batches(view["batches"]), _agents(view["agents"])]
    shown = [t if t.row_count else Text(f"{t.title}: none", style="dim") for t in tables]
    return Group(_health(view["health"]), *shown)


def _health(h: Doc) -> RenderableType:
    text = Text.assemble(("aiosd is ", "bold"), (h["status"], HEALTH_STYLE[h["status"]]))
    for p in h["problems"]:
        style = "red" if p["severity"] == CRITICAL else "yellow"
        text.append(f"\n  {p['severity']:<8} {p['rule']:<17} ", style=style)
        text.append(p["message"])
    return text


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", expand=False, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _state(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))


def _ago(seconds: float | None) -> str:
    return "-" if seconds is None else duration(seconds) + " ago"


def duration(seconds: float) -> str:
    """A short human duration: 45s, 12m 5s, 3h 2m, 2d 4h."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _schedulers(rows: list[Doc]) -> Table:
    table = _table("Schedulers", "id", "state", "version", "policy", "threads", "uptime", "last heartbeat")
    for r in rows[:5]:
        uptime = duration(r["uptime_seconds"]) if r["uptime_seconds"] is not None else "-"
        table.add_row(
            r["id"], _state(r["state"]), r["version"], r["policy"], str(r["threads"]), uptime, _ago(r["last_seen_ago"])
        )
    return table


def _fleet(rows: list[Doc]) -> Table:
    table = _table(
        "LLM workers and tool runners", "id", "kind", "host", "model", "load", "state", "heartbeat", "metrics"
    )
    for r in rows:
        load = f"{r['in_flight']}/{r['capacity']}"
        metrics = "  ".join(f"{k} {v:g}" for k, v in sorted(r["metrics"].items())[:6])
        table.add_row(
            r["id"], r["kind"], r["host"], r["model"], load, _state(r["state"]), _ago(r["last_seen_ago"]), metrics
        )
    return table


def _runners(rows: list[Doc]) -> Table:
    table = _table("Task runners", "id", "agent", "running", "state", "heartbeat", "programs")
    for r in rows:
        table.add_row(
            r["id"],
            r["agent"],
            f"{r['running']}/{r['capacity']}",
            _state(r["state"]),
            _ago(r["last_seen_ago"]),
            ", ".join(r["programs"][:8]),
        )
    return table


def _queues(view: Doc) -> Table:
    table = _table("Queues and backlog", "what", "figures")
    queues = view["queues"]
    if queues["error"]:
        table.add_row("RabbitMQ", Text(queues["error"], style="yellow"))
    for name, d in sorted(queues["depths"].items()):
        table.add_row(
            name, f"{d['messages']} ({d['ready']} ready, {d['unacked']} unacked), {d['consumers']} consumer(s)"
        )
    backlog, leases = view["backlog"], view["leases"]
    more = "+" if backlog["truncated"] else ""
    for kind, states in backlog["by_kind"].items():
        table.add_row(f"live {kind} calls{more}", "  ".join(f"{s} {n}" for s, n in sorted(states.items())))
    for kind, prios in backlog["queued_by_priority"].items():
        table.add_row(f"queued {kind} by priority", "  ".join(f"p{p}: {n}" for p, n in prios.items()))
    if backlog["oldest_queued_seconds"] is not None:
        table.add_row("oldest queued", duration(backlog["oldest_queued_seconds"]))
    held = "  ".join(f"{w} {n}" for w, n in sorted(leases["by_worker"].items())) or "none"
    table.add_row("leases held", f"{leases['held']} ({held}); expiring (worker gone): {leases['expiring']}")
    return table


def _batches(rows: list[Doc]) -> Table:
    table = _table("Running batches", "batch", "program", "agent", "progress", "failed", "tasks/s", "ETA")
    for r in rows:
        share = r["done"] / r["total"] if r["total"] else 0.0
        bar = "#" * int(share * 20) + "." * (20 - int(share * 20))
        eta = duration(r["eta_seconds"]) if r["eta_seconds"] is not None else "-"
        label = r["id"] + (f" ({r['name']})" if r["name"] else "")
        table.add_row(
            label,
            r["program"],
            r["agent"],
            f"{bar} {r['done']}/{r['total']}",
            str(r["counts"]["failed"]),
            f"{r['tasks_per_second']:.2f}",
            eta,
        )
    return table


def _agents(rows: list[Doc]) -> Table:
    table = _table("Top agents this period", "agent", "period", "requests", "tokens", "LLM calls")
    for r in rows:
        tokens = f"{r['tokens']}" + (f" / {r['tokens_quota']}" if r["tokens_quota"] is not None else "")
        requests = f"{r['requests']}" + (f" / {r['requests_quota']}" if r["requests_quota"] is not None else "")
        table.add_row(r["agent"], str(r["window"]), requests, tokens, str(r["llm_calls"]))
    return table
