"""What aiosd is doing, read in one go: the state ``aiosd status`` prints and ``aiosd web`` shows.

Every figure comes from what the processes already write -- nothing here asks
a process anything, so a dead one cannot make the overview hang:

* ``schedulers``: one document per scheduler process, refreshed every 5 s;
* ``workers``: the last heartbeat of each LLM worker and tool runner;
* ``runners``: the last ``task.heartbeat`` of each task runner;
* ``syscalls``: the live (in-flight) calls, read with a bounded query;
* ``batches``, ``counters``: running batches and this period's usage per agent;
* RabbitMQ's management API: queue depths, and the dead-letter queue's recent lengths.

:func:`health` turns an overview into problems and an exit code (see ``docs/operating.md``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from aiosd.daemon.access.counters import COUNTERS
from aiosd.daemon.access.directory import AGENTS, Directory
from aiosd.daemon.admin.batches import progress
from aiosd.daemon.admin.management import vhost_of
from aiosd.daemon.runtime.presence import PRESENCE_INTERVAL
from aiosd.daemon.services.tasks.store import TaskStore
from aiosd.daemon.store import Doc, Store
from aiosd.sdk.cluster import EVENTS_QUEUE, RUNNERS_COLLECTION, SCHEDULERS_COLLECTION
from aiosd.sdk.process.settings import Settings
from aiosd.sdk.protocol import DEAD_LETTER_QUEUE, INGRESS_QUEUE, utcnow
from aiosd.sdk.syscalls import served_by
from aiosd.sdk.tasks import TASK_QUEUE

#: A scheduler unseen for this long is dead (it refreshes its document every PRESENCE_INTERVAL).
SCHEDULER_TIMEOUT = 3 * PRESENCE_INTERVAL
#: Live syscalls read at most (the collection holds in-flight calls only; past this, counts are "at least").
BACKLOG_BOUND = 10_000
#: Scheduler, worker and runner documents shown at most (newest heartbeat first; dead ones age out).
SHOWN = 50
#: Seconds of RabbitMQ's queue-length samples looked at to tell whether dead letters are growing.
DEAD_WINDOW = 60
QUEUES = (INGRESS_QUEUE, DEAD_LETTER_QUEUE, EVENTS_QUEUE, TASK_QUEUE)
CRITICAL, WARNING = "critical", "warning"
#: Exit codes of ``aiosd status`` (those of monitoring plugins: 0 OK, 1 WARNING, 2 CRITICAL).
EXIT_HEALTHY, EXIT_DEGRADED, EXIT_UNHEALTHY = 0, 1, 2


class Observer:
    """Reads the overview from MongoDB and RabbitMQ's management API."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self.tasks = TaskStore(store.db)
        self.directory = Directory(store.db[AGENTS])
        self._http = httpx.Client(
            base_url=settings.amqp_admin_url.rstrip("/") + "/api",
            auth=(settings.amqp_admin_user, settings.amqp_admin_password.get_secret_value()),
            timeout=5.0,
        )
        self._vhost = quote(vhost_of(settings.amqp_url), safe="")

    def close(self) -> None:
        """Close the HTTP connection pool (the store belongs to the caller)."""
        self._http.close()

    def overview(self) -> Doc:
        """Everything, as one JSON-friendly document (datetimes stay datetimes)."""
        now = utcnow()
        workers = self.workers(now)
        view: Doc = {
            "at": now,
            "schedulers": self.schedulers(now),
            "workers": workers,
            "runners": self.runners(now),
            "queues": self.queues(),
            **self.live_calls(now, workers),
            "batches": self.running_batches(now),
            "agents": self.top_agents(now),
        }
        view["health"] = health(view)
        return view

    def schedulers(self, now: datetime) -> list[Doc]:
        """Scheduler processes, newest heartbeat first: up, dead (unseen) or stopped (clean exit)."""
        docs = self._store.db[SCHEDULERS_COLLECTION].find({}).sort("last_seen", -1).limit(SHOWN)
        return [_scheduler_row(d, now) for d in docs]

    def workers(self, now: datetime) -> list[Doc]:
        """LLM workers and tool runners from their last heartbeats."""
        timeout = self._settings.worker_timeout
        return [_worker_row(d, now, timeout) for d in self._store.workers.find({}).sort("last_seen", -1).limit(SHOWN)]

    def runners(self, now: datetime) -> list[Doc]:
        """Task runners; one unseen for a task lease's lifetime has lost its tasks and counts as dead."""
        timeout = self._settings.task_lease_ttl
        docs = self._store.db[RUNNERS_COLLECTION].find({}).sort("last_seen", -1).limit(SHOWN)
        return [_runner_row(d, now, timeout) for d in docs]

    def queues(self) -> Doc:
        """Depths of aiosd's queues, and the dead-letter queue's growth over :data:`DEAD_WINDOW` seconds."""
        names = "|".join(q.replace(".", r"\.") for q in QUEUES)
        params = {"page": "1", "page_size": "100", "name": f"^({names})$", "use_regex": "true"}
        try:
            listed = self._get(f"/queues/{self._vhost}", params={**params, "columns": _QUEUE_COLUMNS})
            dead = self._get(
                f"/queues/{self._vhost}/{DEAD_LETTER_QUEUE}",
                params={"lengths_age": str(DEAD_WINDOW), "lengths_incr": "5", "columns": "messages_details"},
            )
        except BrokerUnreadable as exc:
            return {"error": str(exc), "depths": {}, "dead_growth": None}
        depths = {item["name"]: _depth(item) for item in listed.get("items", [])} if isinstance(listed, dict) else {}
        samples = [s["sample"] for s in (dead or {}).get("messages_details", {}).get("samples", [])]
        growth = samples[0] - samples[-1] if len(samples) >= 2 else None  # newest first
        return {"error": None, "depths": depths, "dead_growth": growth}

    def _get(self, path: str, params: dict[str, str]) -> Any:
        try:
            r = self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise BrokerUnreadable(f"RabbitMQ management API unreachable: {exc}") from exc
        if r.status_code == 404:
            return None  # the queue was not declared yet: no scheduler ever ran on this vhost
        if r.status_code >= 400:
            raise BrokerUnreadable(f"RabbitMQ management API answered {r.status_code} for {path}")
        return r.json()

    def live_calls(self, now: datetime, workers: list[Doc]) -> Doc:
        """The backlog (calls not yet on a worker) and the leases held, from the live ``syscalls``."""
        fields = {"state": 1, "syscall": 1, "priority": 1, "agent": 1, "lease": 1, "hint": 1, "queued_at": 1}
        docs = list(self._store.syscalls.find({}, fields).limit(BACKLOG_BOUND))
        live = {w["id"] for w in workers if w["state"] != "dead"}
        return {"backlog": backlog(docs, now, len(docs) >= BACKLOG_BOUND), "leases": leases(docs, now, live)}

    def running_batches(self, now: datetime) -> list[Doc]:
        """Batches still submitting or running, with their progress figures."""
        docs = self.tasks.batches_in(["submitting", "running"])
        rows = [progress(d, now) for d in docs if d["state"] in ("submitting", "running")]
        return sorted(rows, key=lambda r: r["created_at"] or now)

    def top_agents(self, now: datetime, limit: int = 10) -> list[Doc]:
        """Agents by tokens (then requests) in their current quota period, with their quotas."""
        latest: dict[str, Doc] = {}
        for doc in self._store.db[COUNTERS].find({"expires_at": {"$gt": now}, "kind": "period"}):
            agent = str(doc.get("agent"))
            if agent not in latest or str(doc.get("window")) > str(latest[agent].get("window")):
                latest[agent] = doc
        rows = sorted((usage_row(d) for d in latest.values()), key=lambda r: (-r["tokens"], -r["requests"]))[:limit]
        for row in rows:
            standing = self.directory.standing(row["agent"])
            if standing is not None:
                row["tokens_quota"] = standing.policy.tokens_per_period
                row["requests_quota"] = standing.policy.requests_per_period
        return rows


class BrokerUnreadable(Exception):
    """The management API could not be read (reported in the overview, not raised to the user)."""


_QUEUE_COLUMNS = "name,messages,messages_ready,messages_unacknowledged,consumers"


def _depth(item: Doc) -> Doc:
    return {
        "messages": int(item.get("messages") or 0),
        "ready": int(item.get("messages_ready") or 0),
        "unacked": int(item.get("messages_unacknowledged") or 0),
        "consumers": int(item.get("consumers") or 0),
    }


def _ago(then: Any, now: datetime) -> float | None:
    return round((now - then).total_seconds(), 1) if isinstance(then, datetime) else None


def _scheduler_row(doc: Doc, now: datetime) -> Doc:
    ago = _ago(doc.get("last_seen"), now)
    state = "stopped" if doc.get("stopped") else ("up" if ago is not None and ago <= SCHEDULER_TIMEOUT else "dead")
    started = doc.get("started_at")
    return {
        "id": doc["_id"],
        **{k: doc.get(k) for k in ("host", "pid", "version", "policy", "threads", "metrics_port")},
        "state": state,
        "started_at": started,
        "uptime_seconds": _ago(started, now) if state == "up" else None,
        "last_seen": doc.get("last_seen"),
        "last_seen_ago": ago,
    }


def _worker_row(doc: Doc, now: datetime, timeout: float) -> Doc:
    ago = _ago(doc.get("last_seen"), now)
    if not doc.get("alive", False) or ago is None or ago > timeout:
        state = "dead"
    elif doc.get("draining"):
        state = "draining"
    else:
        state = "up" if doc.get("healthy", True) else "unhealthy"
    return {
        "id": doc["_id"],
        **{k: doc.get(k) for k in ("kind", "host", "backend", "model", "capacity")},
        "in_flight": int(doc.get("leases") or 0),
        "state": state,
        "last_seen": doc.get("last_seen"),
        "last_seen_ago": ago,
        "metrics": dict(doc.get("metrics") or {}),
    }


def _runner_row(doc: Doc, now: datetime, timeout: float) -> Doc:
    ago = _ago(doc.get("last_seen"), now)
    return {
        "id": doc["_id"],
        "agent": doc.get("agent"),
        "capacity": int(doc.get("capacity") or 0),
        "running": int(doc.get("running") or 0),
        "programs": list(doc.get("programs") or []),
        "state": "up" if ago is not None and ago <= timeout else "dead",
        "last_seen": doc.get("last_seen"),
        "last_seen_ago": ago,
    }


def backlog(docs: list[Doc], now: datetime, truncated: bool = False) -> Doc:
    """Live calls by kind and state, queued ones by kind and priority and, for LLM calls, by model."""
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    by_priority: dict[str, Counter[int]] = defaultdict(Counter)
    models: Counter[str] = Counter()
    oldest: datetime | None = None
    for doc in docs:
        kind = served_by(str(doc.get("syscall")))
        state = str(doc.get("state"))
        by_kind[kind][state] += 1
        if state != "queued":
            continue
        by_priority[kind][int(doc.get("priority") or 0)] += 1
        if kind == "llm":
            models[str((doc.get("hint") or {}).get("model") or "")] += 1  # "" = any model
        queued_at = doc.get("queued_at")
        if isinstance(queued_at, datetime) and (oldest is None or queued_at < oldest):
            oldest = queued_at
    return {
        "calls": len(docs),
        "truncated": truncated,
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "queued_by_priority": {k: {p: n for p, n in sorted(v.items(), reverse=True)} for k, v in by_priority.items()},
        "queued_models": dict(models),
        "oldest_queued_seconds": _ago(oldest, now),
    }


def leases(docs: list[Doc], now: datetime, live_workers: set[str]) -> Doc:
    """Leases held, per worker; "expiring" are those of workers that stopped heartbeating.

    A lease's expiry is extended in the scheduler's memory by each heartbeat
    and not written back, so the stored expiry says nothing; a lease whose
    worker is dead, though, runs out within ``lease_ttl`` and is re-queued.
    """
    held = [d for d in docs if d.get("state") == "leased" and d.get("lease")]
    per_worker = Counter(str(d["lease"].get("worker")) for d in held)
    granted = [d["lease"].get("granted_at") for d in held if isinstance(d["lease"].get("granted_at"), datetime)]
    return {
        "held": len(held),
        "by_worker": dict(per_worker),
        "expiring": sum(n for w, n in per_worker.items() if w not in live_workers),
        "oldest_seconds": _ago(min(granted), now) if granted else None,
    }


def usage_row(doc: Doc) -> Doc:
    """One agent's usage in one quota period (a ``counters`` document)."""
    prompt, completion = int(doc.get("prompt_tokens") or 0), int(doc.get("completion_tokens") or 0)
    return {
        "agent": doc.get("agent"),
        "window": doc.get("window"),
        "requests": int(doc.get("requests") or 0),
        "tokens": prompt + completion,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": int(doc.get("cached_tokens") or 0),
        "llm_calls": int(doc.get("llm_calls") or 0),
        "tokens_quota": None,
        "requests_quota": None,
    }


def health(view: Doc) -> Doc:
    """The health rules over an overview: problems, a status word and the exit code.

    Critical (exit 2): no scheduler is up; queued LLM calls for a model that no
    live worker serves; queued tool calls and no live tool runner; tasks
    waiting in ``aiosd.tasks`` and no live task runner. Warning (exit 1): the
    dead-letter queue grew in the last minute; an LLM worker or tool runner
    reports itself unhealthy; the management API could not be read.
    """
    problems = [*_critical(view), *_warnings(view)]
    worst = {p["severity"] for p in problems}
    code = EXIT_UNHEALTHY if CRITICAL in worst else (EXIT_DEGRADED if worst else EXIT_HEALTHY)
    word = {EXIT_HEALTHY: "healthy", EXIT_DEGRADED: "degraded", EXIT_UNHEALTHY: "unhealthy"}[code]
    return {"status": word, "exit_code": code, "problems": problems}


def _problem(rule: str, severity: str, message: str) -> Doc:
    return {"rule": rule, "severity": severity, "message": message}


def _critical(view: Doc) -> list[Doc]:
    found: list[Doc] = []
    if not any(s["state"] == "up" for s in view["schedulers"]):
        last = view["schedulers"][0] if view["schedulers"] else None
        seen = f"; the last one ({last['id']}) is {last['state']}" if last else "; none has ever run on this database"
        found.append(_problem("scheduler", CRITICAL, "no scheduler is up" + seen))
    serving = [w for w in view["workers"] if w["state"] == "up"]
    for model, n in sorted(view["backlog"]["queued_models"].items()):
        if not any(w["kind"] == "llm" and (not model or w["model"] == model) for w in serving):
            which = f"model {model!r}" if model else "any model"
            found.append(_problem("llm_workers", CRITICAL, f"{n} LLM call(s) queued for {which}: no live worker"))
    tools = sum(view["backlog"]["queued_by_priority"].get("tools", {}).values())
    if tools and not any(w["kind"] == "tools" for w in serving):
        found.append(_problem("tool_runners", CRITICAL, f"{tools} tool call(s) queued: no live tool runner"))
    waiting = view["queues"]["depths"].get(TASK_QUEUE, {}).get("ready", 0)
    if waiting and not any(r["state"] == "up" for r in view["runners"]):
        found.append(_problem("task_runners", CRITICAL, f"{waiting} task(s) waiting in {TASK_QUEUE}: no live runner"))
    return found


def _warnings(view: Doc) -> list[Doc]:
    found: list[Doc] = []
    queues = view["queues"]
    if queues["error"]:
        found.append(_problem("broker", WARNING, f"queue depths unknown: {queues['error']}"))
    if (queues["dead_growth"] or 0) > 0:
        total = queues["depths"].get(DEAD_LETTER_QUEUE, {}).get("messages", "?")
        found.append(
            _problem(
                "dead_letters",
                WARNING,
                f"{queues['dead_growth']} message(s) dead-lettered in the last {DEAD_WINDOW}s ({total} in"
                f" {DEAD_LETTER_QUEUE}; `aiosd audit tail` says why)",
            )
        )
    for w in view["workers"]:
        if w["state"] == "unhealthy":
            found.append(_problem("worker_unhealthy", WARNING, f"{w['kind']} worker {w['id']} reports unhealthy"))
    return found
