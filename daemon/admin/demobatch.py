"""The demo's batch: a small JSONL batch of the ``summarize`` program, and one ``react`` task.

It shows the third way aiosd is used: submit a batch, watch its progress bar,
read its results. The tasks run in ``aiosd runner`` (started here if no runner
consumes the task queue) as a demo agent, under that agent's policy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from aiosd.daemon.access.authorizer import PolicyLookup
from aiosd.daemon.access.directory import AGENTS, Directory
from aiosd.daemon.admin.batches import BatchAdmin, TaskPublisher, progress
from aiosd.daemon.runtime.wiring import trusted_agents
from aiosd.daemon.services.tasks.store import TaskStore
from aiosd.daemon.store import Store
from aiosd.sdk import Client
from aiosd.sdk.process.settings import Settings

TEXTS = [
    "RabbitMQ holds every syscall in a durable priority queue until the scheduler has stored it.",
    "MongoDB is the source of truth: syscalls, memory notes, files, policies and the audit log live there.",
    "A worker drives one SGLang runtime and keeps many calls in flight so continuous batching stays full.",
    "Agent programs replay their syscalls after a crash, so tokens already paid for are not paid again.",
    "The audit log is hash-chained, so a record changed after the fact breaks the chain and is detected.",
    "Batches run below interactive work: a backlog overnight does not slow an agent at the keyboard.",
]


def run_batch(settings: Settings, agent: str, agent_url: str, console: Console) -> bool:
    """Submit the demo batch and a react task as ``agent``, show their progress, print the results."""
    store = Store(settings.mongo_url, settings.mongo_db)
    publisher = TaskPublisher(settings.amqp_url)
    try:
        policies = PolicyLookup(Directory(store.db[AGENTS]), trusted_agents(settings))
        admin = BatchAdmin(TaskStore(store.db), policies, publisher)
        with TemporaryDirectory() as tmp:
            path = Path(tmp) / "demo.jsonl"
            lines = [{"input": {"text": t, "max_words": 12}, "key": f"text-{i + 1}"} for i, t in enumerate(TEXTS)]
            path.write_text("".join(json.dumps(line) + "\n" for line in lines))
            submitted = admin.submit(path, "summarize", agent, name="demo")
        console.print(
            f"submitted batch {submitted.batch}: {submitted.tasks} summarize tasks for {agent}"
            f" (`aiosd batch submit demo.jsonl --program summarize --agent {agent}`)"
        )
        with Client(agent_url, timeout=60) as client:
            react = client.call("task.submit", {"program": "react", "input": {"question": "What is 17 * 23?"}})
            _watch(admin, submitted.batch, console)
            answer = _wait_task(client, react["id"])
        _results(admin, submitted.batch, console)
        _react(answer, console)
        return bool(progress(admin.store.batch(submitted.batch) or {"_id": ""})["counts"]["succeeded"] == len(TEXTS))
    finally:
        publisher.close()
        store.close()


def _watch(admin: BatchAdmin, batch_id: str, console: Console, timeout: float = 600.0) -> None:
    bar = Progress(TextColumn("[bold]batch {task.description}"), BarColumn(), TextColumn("{task.fields[line]}"))
    deadline = time.monotonic() + timeout
    with bar:
        shown = bar.add_task(batch_id, total=len(TEXTS), line="")
        while time.monotonic() < deadline:
            f = progress(admin.store.batch(batch_id) or {"_id": batch_id})
            c = f["counts"]
            line = f"{f['done']}/{f['total']} done, {c['running']} running, {c['queued']} queued, {f['tokens']} tokens"
            bar.update(shown, completed=f["done"], line=line)
            if f["state"] in ("finished", "cancelled"):
                break
            time.sleep(0.5)
    console.print(f"`aiosd batch status {batch_id} --watch` shows the same; `aiosd batch results {batch_id}` exports")


def _wait_task(client: Client, task_id: str, timeout: float = 600.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = dict(client.call("task.get", {"id": task_id}))
        if task["state"] not in ("queued", "running"):
            return task
        time.sleep(0.5)
    return dict(client.call("task.get", {"id": task_id}))


def _results(admin: BatchAdmin, batch_id: str, console: Console) -> None:
    table = Table(title=f"batch {batch_id}: results (line order)", show_lines=False)
    for col in ("key", "state", "summary (SmolLM2-135M)", "keywords", "tokens"):
        table.add_column(col)
    for task in admin.results(batch_id):
        out = task.get("output") or {}
        usage = task.get("usage") or {}
        tokens = int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
        summary = str(out.get("summary") or (task.get("error") or {}).get("message") or "")[:70]
        table.add_row(str(task.get("key")), task["state"], summary, ", ".join(out.get("keywords") or []), str(tokens))
    console.print(table)


def _react(task: dict[str, Any], console: Console) -> None:
    out = task.get("output") or {}
    steps = "; ".join(f"{s['action']} -> {s['observation']}" for s in out.get("steps") or [])
    console.print(
        f"react task {task['id']}: {task['state']}, question 'What is 17 * 23?', tool steps: {steps or 'none'},"
        f" notes kept in memory: {len(out.get('notes') or [])}"
    )
