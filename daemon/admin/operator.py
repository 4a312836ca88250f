"""Operator commands: ``aiosd approvals``, ``approve``, ``deny`` and ``aiosd audit``."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from aiosd.daemon.admin.identities import operator_name
from aiosd.daemon.audit.chain import AuditLog, as_dict
from aiosd.daemon.audit.reader import after, format_record, last_seq, latest, verify
from aiosd.daemon.pipeline.approvals import APPROVALS, Approvals
from aiosd.daemon.runtime.wiring import audit_key
from aiosd.daemon.store import Doc, Store
from aiosd.sdk.errors import EXIT_FAILURE, AiosdError
from aiosd.sdk.process.options import fail, load, settings_options
from aiosd.sdk.process.settings import Settings


@contextmanager
def _store(config_file: str | None, overrides: dict[str, Any]) -> Iterator[tuple[Store, Settings]]:
    settings = load(config_file, **overrides)
    store = Store(settings.mongo_url, settings.mongo_db)
    try:
        store.ping()
        yield store, settings
    except AiosdError as exc:
        fail(exc)
    finally:
        store.close()


def _approvals(store: Store, settings: Settings) -> Approvals:
    audit = AuditLog(store.audit, key=audit_key(settings), actor=operator_name())
    return Approvals(store.syscalls, store.db[APPROVALS], audit)


@click.command()
@settings_options
@click.option("--json", "as_json", is_flag=True)
def approvals(config_file: str | None, as_json: bool, **overrides: Any) -> None:
    """List syscalls waiting for a human approval."""
    with _store(config_file, overrides) as (store, settings):
        docs = _approvals(store, settings).pending()
    rows = [_pending_row(d) for d in docs]
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("nothing waits for approval")
    for r in rows:
        state = f" [{r['decision']} by {r['by']}, being applied]" if r["decision"] else ""
        click.echo(f"{r['id']}  {r['syscall']}  requested {r['requested_at']}  expires {r['expires_at']}{state}")
        click.echo(f"    args {json.dumps(r['args'], default=str)[:300]}")


@click.command()
@settings_options
@click.argument("approval_id")
@click.option("--reason", help="Why (recorded in the audit log).")
def approve(config_file: str | None, approval_id: str, reason: str | None, **overrides: Any) -> None:
    """Approve APPROVAL_ID (agent/message_id, or a unique message id): the call runs."""
    _decide(config_file, approval_id, True, reason, overrides)


@click.command()
@settings_options
@click.argument("approval_id")
@click.option("--reason", required=True, help="Why (sent to the agent and recorded in the audit log).")
def deny(config_file: str | None, approval_id: str, reason: str, **overrides: Any) -> None:
    """Deny APPROVAL_ID: the agent gets an approval_denied reply."""
    _decide(config_file, approval_id, False, reason, overrides)


def _decide(config_file: str | None, ident: str, approve: bool, reason: str | None, overrides: dict[str, Any]) -> None:
    with _store(config_file, overrides) as (store, settings):
        decision = _approvals(store, settings).decide(ident, approve, operator_name(), reason)
    click.echo(f"{decision['_id']} {decision['decision']}; the scheduler applies it within {settings.approval_poll:g}s")


def _pending_row(doc: Doc) -> dict[str, Any]:
    approval = doc.get("approval") or {}
    decision = doc.get("decision") or {}
    return {
        "id": doc["_id"],
        "agent": doc["agent"],
        "syscall": doc["syscall"],
        "args": doc.get("args"),
        "requested_at": approval.get("requested_at"),
        "expires_at": approval.get("expires_at"),
        "decision": decision.get("decision"),
        "by": decision.get("by"),
    }


@click.group()
def audit() -> None:
    """The hash-chained audit log: verify it, read it."""


@audit.command("verify")
@settings_options
@click.option("--json", "as_json", is_flag=True)
def verify_cmd(config_file: str | None, as_json: bool, **overrides: Any) -> None:
    """Check every record's hash and link; exit 1 naming the first broken record."""
    with _store(config_file, overrides) as (store, settings):
        verdict = verify(store.audit, audit_key(settings))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": verdict.ok,
                    "records": verdict.records,
                    "last_seq": verdict.last_seq,
                    "last_hash": verdict.last_hash,
                    "broken": verdict.broken,
                    "problem": verdict.problem,
                },
                default=str,
            )
        )
    elif verdict.ok:
        click.echo(f"audit log intact: {verdict.records} records, head {verdict.last_seq} {verdict.last_hash}")
        if verdict.beyond_head:
            click.echo(f"note: {verdict.beyond_head} record(s) after the stored head (normal after a crash)")
    else:
        click.echo(f"audit log BROKEN at record {verdict.broken}: {verdict.problem}", err=True)
        click.echo(f"records 1..{verdict.last_seq} before it verify", err=True)
    sys.exit(0 if verdict.ok else EXIT_FAILURE)


@audit.command()
@settings_options
@click.option("--agent", help="Only this agent's records.")
@click.option("-n", "--lines", "count", default=20, show_default=True, help="How many records to show.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new records as they are appended.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def tail(config_file: str | None, agent: str | None, count: int, follow: bool, as_json: bool, **overrides: Any) -> None:
    """Show the latest audit records, oldest first."""
    with _store(config_file, overrides) as (store, _):
        docs = latest(store.audit, count, agent)
        seq = max([int(d["_id"]) for d in docs if isinstance(d["_id"], int)] + [last_seq(store.audit)])
        for doc in docs:
            _echo(doc, as_json)
        while follow:
            time.sleep(0.5)
            for doc in after(store.audit, seq, agent):
                _echo(doc, as_json)
                seq = max(seq, int(doc["_id"]))


def _echo(doc: Doc, as_json: bool) -> None:
    click.echo(json.dumps(as_dict(doc), default=str) if as_json else format_record(doc))
