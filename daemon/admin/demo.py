"""``aiosd demo``: sample agents driven through a live scheduler and worker, with a report,
then a small batch of agent programs (see :mod:`.demobatch`).

If no scheduler consumes the ingress queue, the demo starts one; if no worker
heartbeats, it starts a CPU worker with the embedded model; if no runner takes
tasks, it starts a task runner and a tool runner. It stops (SIGTERM) whatever
it started at the end.
"""

from __future__ import annotations

import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from tempfile import gettempdir
from typing import Any

import pika
import pika.exceptions
from rich.console import Console
from rich.table import Table

from aiosd.daemon.access.directory import AGENTS, Directory
from aiosd.daemon.access.policy import Policy
from aiosd.daemon.admin.demobatch import run_batch
from aiosd.daemon.admin.identities import open_admin
from aiosd.daemon.audit.reader import verify
from aiosd.daemon.runtime.wiring import audit_key
from aiosd.daemon.store import Store
from aiosd.daemon.transport.broker import declare_task_queue
from aiosd.sdk import CallError, Client
from aiosd.sdk.errors import EXIT_FAILURE, EXIT_OK, ServiceUnavailable
from aiosd.sdk.process.metrics import DEFAULT_PORTS
from aiosd.sdk.process.settings import Settings
from aiosd.sdk.protocol import INGRESS_QUEUE, utcnow
from aiosd.sdk.tasks import TASK_QUEUE

console = Console()

TOPICS = {
    "planner": ["standup moved to 10am on monday", "quarterly report due friday", "book the team offsite in june"],
    "researcher": [
        "paper on radix attention caches prefixes",
        "rabbitmq priority queues go from 0 to 9",
        "bm25 ranks by term frequency",
    ],
    "shopper": ["buy oat milk and coffee", "the printer needs a new toner", "order birthday cake for saturday"],
}
QUERIES = {
    "planner": "when is the report due",
    "researcher": "how do priority queues work",
    "shopper": "what coffee to buy",
}


@dataclass
class AgentRun:
    """What one sample agent did."""

    name: str
    calls: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    answer: str = ""
    note_id: str = ""


def run_demo(settings: Settings, agents: int) -> int:
    """Run the demo against ``settings``; return the process exit code."""
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        if not _scheduler_is_serving(settings):
            children.append(("scheduler", _start("scheduler", "scheduler_ready", settings)))
        if not _worker_is_serving(settings):
            children.append(("worker", _start("worker", "worker_ready", settings)))
        _console(settings, children)
        kinds = [list(TOPICS)[i % len(TOPICS)] for i in range(agents)]
        urls = _identities(settings, [f"demo-{kind}-{i}" for i, kind in enumerate(kinds)])
        console.print(
            f"[bold]aiosd demo[/]: {agents} sample agents, each its own broker user -> {settings.amqp_url.split('@')[-1]}"
        )
        with ThreadPoolExecutor(agents) as pool:
            runs = list(pool.map(lambda args: _agent(*args), zip(urls.items(), kinds, strict=True)))
        _isolation(runs, urls)
        _report(runs)
        if not _runner_is_serving(settings):
            children.append(("tool runner", _start("tools", "worker_ready", settings)))
            children.append(("task runner", _start("runner", "runner_ready", settings)))
        console.print("[bold]a batch[/]: agent programs run as tasks by `aiosd runner`, under the agent's identity")
        agent, url = next(iter(urls.items()))
        batch_ok = run_batch(settings, agent, url, console)
        intact = _audit(settings)
        return EXIT_OK if intact and batch_ok and all(not r.errors for r in runs) else EXIT_FAILURE
    finally:
        for name, proc in reversed(children):
            _stop(name, proc)


def _identities(settings: Settings, names: list[str]) -> dict[str, str]:
    """An AMQP URL per agent: created with the default policy, or given a fresh password if it exists."""
    store = Store(settings.mongo_url, settings.mongo_db)
    admin, broker = open_admin(store, settings)
    try:
        urls = {}
        for name in names:
            known = Directory(store.db[AGENTS]).standing(name) is not None
            if not known and broker.user_exists(name):
                broker.delete_user(name)  # a demo user left from a run against another database
            creds = admin.rotate(name) if known else admin.add(name, Policy())
            assert creds is not None
            urls[name] = creds.url
        return urls
    finally:
        broker.close()
        store.close()


def _agent(identity: tuple[str, str], kind: str) -> AgentRun:
    name, url = identity
    run = AgentRun(name=name)
    with Client(url, timeout=60) as client:
        _script(run, client, kind)
    return run


def _script(run: AgentRun, client: Client, kind: str) -> None:
    try:
        ids = [_timed(run, client, "memory.add", {"content": t, "tags": [kind]})["id"] for t in TOPICS[kind]]
        run.note_id = ids[1]
        hits = _timed(run, client, "memory.search", {"query": QUERIES[kind], "tags": [kind], "limit": 1})
        found = hits["results"][0]["content"] if hits["results"] else "(nothing found)"
        chat = _timed(
            run,
            client,
            "llm.chat",
            {
                "messages": [
                    {"role": "system", "content": "You are a concise assistant."},
                    {"role": "user", "content": f"Write a short reminder for this task: {found}"},
                ],
                "max_tokens": 40,
                "temperature": 0,
            },
        )
        run.answer = f"note: {found}\nllm: {chat['text'].strip()}"
        _timed(run, client, "memory.update", {"id": ids[0], "tags": [kind, "done"]})
        _timed(run, client, "memory.delete", {"id": ids[-1]})
        try:
            client.call("memory.teleport", {}, program=run.name)
        except CallError as exc:
            run.calls += 1
            if exc.code != "unknown_syscall":
                run.errors.append(f"bad call answered with {exc.code}")
    except CallError as exc:
        run.errors.append(f"{exc.code}: {exc.message}")


def _isolation(runs: list[AgentRun], urls: dict[str, str]) -> None:
    """Each agent tries to read the next one's note: policies keep memory private."""
    if len(runs) < 2:
        return
    for run, other in zip(runs, [*runs[1:], *runs[:1]], strict=True):
        with Client(urls[run.name], timeout=30) as client:
            reply = client.request("memory.get", {"id": other.note_id})
        if reply.error is None or reply.error.code.value != "not_found":
            run.errors.append(f"read {other.name}'s note: {reply.status.value}")
    console.print("each agent tried to read another agent's note and got [bold]not_found[/]: memory is private")


def _audit(settings: Settings) -> bool:
    store = Store(settings.mongo_url, settings.mongo_db)
    try:
        verdict = verify(store.audit, audit_key(settings))
    finally:
        store.close()
    state = "[green]intact[/]" if verdict.ok else f"[red]BROKEN[/]: {verdict.problem}"
    console.print(f"audit log: {verdict.records} hash-chained records, {state} (`aiosd audit verify`)")
    return verdict.ok


def _timed(run: AgentRun, client: Client, syscall: str, args: dict[str, Any]) -> Any:
    start = time.perf_counter()
    try:
        return client.call(syscall, args, program=run.name)
    finally:
        run.calls += 1
        run.latencies_ms.append((time.perf_counter() - start) * 1000)


def _report(runs: list[AgentRun]) -> None:
    table = Table(title="sample agents", show_lines=True)
    for col in ("agent", "syscalls", "median ms", "memory.search + llm.chat", "errors"):
        table.add_column(col)
    for r in runs:
        median = f"{statistics.median(r.latencies_ms):.1f}" if r.latencies_ms else "-"
        table.add_row(r.name, str(r.calls), median, r.answer, "; ".join(r.errors) or "none")
    console.print(table)
    console.print(
        "each agent also sent one unknown syscall and got an [bold]unknown_syscall[/] error reply, as it should"
    )


def _scheduler_is_serving(settings: Settings) -> bool:
    try:
        conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    except pika.exceptions.AMQPError as exc:
        raise ServiceUnavailable(f"RabbitMQ is unreachable: {exc!r} (run `make services`)") from exc
    try:
        ok = conn.channel().queue_declare(INGRESS_QUEUE, passive=True)
        return bool(ok.method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:
        return False  # queue not declared yet: no scheduler ever ran here
    finally:
        if conn.is_open:
            conn.close()


def _console(settings: Settings, children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    """Start a web console for the demo (unless one answers already) and say where it and the metrics are."""
    port = settings.web_port or 9720
    if not _listening(settings.web_host, port):
        password = secrets.token_urlsafe(12)
        children.append(("web console", _start("web", "web_ready", settings, AIOSD_WEB_PASSWORD=password)))
        console.print(
            f"web console: http://{settings.web_host}:{port}/ (login {settings.web_user} / {password}),"
            " live while the demo runs"
        )
    else:
        console.print(f"web console: http://{settings.web_host}:{port}/ (already running)")
    if settings.metrics_port != 0:
        shown = ", ".join(f"{kind} :{port}" for kind, port in DEFAULT_PORTS.items())
        console.print(f"Prometheus metrics: http://{settings.metrics_host}:<port>/metrics ({shown})")


def _listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _runner_is_serving(settings: Settings) -> bool:
    """Whether a task runner consumes the task queue."""
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        ch = conn.channel()
        declare_task_queue(ch)
        return bool(ch.queue_declare(TASK_QUEUE, passive=True).method.consumer_count)
    finally:
        if conn.is_open:
            conn.close()


def _worker_is_serving(settings: Settings) -> bool:
    store = Store(settings.mongo_url, settings.mongo_db)
    try:
        cutoff = utcnow() - timedelta(seconds=3 * settings.heartbeat_interval)
        return store.workers.count_documents({"alive": True, "last_seen": {"$gte": cutoff}}) > 0
    finally:
        store.close()


def _start(command: str, ready_event: str, settings: Settings, **extra: str) -> subprocess.Popen[bytes]:
    log = Path(gettempdir()) / f"aiosd-demo-{command}.log"
    console.print(f"starting a {command} (log: {log})")
    out = log.open("wb")
    argv = [sys.executable, "-m", "aiosd.daemon.admin.cli", command, "--log-format", "json"]
    # The children must see what the demo sees, flags included.
    env = {
        **os.environ,
        "AIOSD_AMQP_URL": settings.amqp_url,
        "AIOSD_MONGO_URL": settings.mongo_url,
        "AIOSD_MONGO_DB": settings.mongo_db,
        **extra,
    }
    proc = subprocess.Popen(argv, stdout=out, stderr=out, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceUnavailable(f"the {command} exited with {proc.returncode}; see {log}")
        if ready_event in log.read_text(errors="replace"):
            return proc
        time.sleep(0.2)
    proc.kill()
    raise ServiceUnavailable(f"the {command} did not become ready; see {log}")


def _stop(name: str, proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    code = proc.wait(120)
    console.print(f"{name} stopped with SIGTERM, exit code {code}")
