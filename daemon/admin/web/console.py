"""What the console's pages read, and the two background jobs that keep history.

Reading is done per request (every figure is a small indexed read, see
:mod:`aiosd.daemon.admin.overview`), except two things a single read cannot
give: a worker's load *over time* (heartbeats keep only the latest load, so
the console samples it every :data:`SAMPLE_SECONDS` while it runs) and the
audit chain's verification (a walk over the whole chain, done on its own
thread every :data:`VERIFY_SECONDS` or when the audit page asks, and shown
with its time and the last record it covered).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from aiosd.daemon.access.counters import COUNTERS, memory_key, period_window
from aiosd.daemon.access.policy import Policy
from aiosd.daemon.admin.batches import progress
from aiosd.daemon.admin.operator import _approvals, _pending_row
from aiosd.daemon.admin.overview import Observer, usage_row
from aiosd.daemon.admin.web.batchview import BatchView
from aiosd.daemon.admin.web.charts import sparkline
from aiosd.daemon.audit.reader import Verdict, latest, verify
from aiosd.daemon.runtime.wiring import audit_key
from aiosd.daemon.store import Doc, Store
from aiosd.sdk.errors import AiosdError
from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.process.settings import Settings
from aiosd.sdk.protocol import utcnow

log = get_logger(__name__)

SAMPLE_SECONDS = 5.0
#: Load history kept per worker (an hour of samples).
HISTORY = 720
#: Seconds between verifications of the audit chain (more when a walk takes long)...
VERIFY_SECONDS = 60.0
#: ... unless someone opens the audit page and the last one is older than this.
RECHECK_SECONDS = 10.0
AGENTS_SHOWN = 500
#: Seconds an overview is shared by every open page (each polls every 2 s).
OVERVIEW_TTL = 1.0


@dataclass(frozen=True)
class AuditCheck:
    """The latest verification of the audit chain (``verdict`` is ``None`` when it could not run)."""

    at: datetime
    verdict: Verdict | None
    error: str | None = None


class Console:
    """The console's reads and its one write (approval decisions)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings.mongo_url, settings.mongo_db)
        self.observer = Observer(self.store, settings)
        self.batches = BatchView(self.observer.tasks)
        self.actor = f"operator:{settings.web_user}@web"
        self._load: dict[str, deque[tuple[float, float]]] = {}
        self._audit: AuditCheck | None = None
        self._lock = threading.Lock()
        self._overview: tuple[float, Doc] | None = None
        self._overview_lock = threading.Lock()
        self._stop = threading.Event()
        self._recheck = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start sampling load and verifying the audit chain."""
        for name, job, wake in (("load", self._sample, self._stop), ("audit", self._verify, self._recheck)):
            thread = threading.Thread(target=self._every, args=(job, wake), name=f"aiosd-web-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Stop the jobs and close the connections."""
        self._stop.set()
        self._recheck.set()
        for thread in self._threads:
            thread.join(5)
        self.observer.close()
        self.store.close()

    def _every(self, job: Callable[[], float], wake: threading.Event) -> None:
        """Run ``job`` until stopped; it returns the seconds to wait, cut short when ``wake`` is set."""
        while not self._stop.is_set():
            try:
                pause = job()
            except Exception as exc:  # a database hiccup must not end the job: the next round retries
                log.warning("web_job_failed", job=job.__name__, error=f"{type(exc).__name__}: {exc}")
                pause = SAMPLE_SECONDS
            wake.wait(pause)
            if wake is not self._stop:
                wake.clear()

    # -- reads -----------------------------------------------------------------------

    def overview(self) -> Doc:
        """What ``aiosd status`` shows; computed at most once per :data:`OVERVIEW_TTL` for all viewers."""
        with self._overview_lock:
            if self._overview is None or time.monotonic() - self._overview[0] > OVERVIEW_TTL:
                self._overview = (time.monotonic(), self.observer.overview())
            return self._overview[1]

    def recent_batches(self, limit: int = 50) -> list[Doc]:
        """The newest batches with their progress."""
        return [progress(b) for b in self.observer.tasks.recent_batches(limit)]

    def workers(self) -> Doc:
        """Workers and runners, each worker with a sparkline of its load over the last hour."""
        now = utcnow()
        rows = self.observer.workers(now)
        clock = time.time()
        with self._lock:
            history = {w: list(samples) for w, samples in self._load.items()}
        for row in rows:
            row["load_points"] = sparkline(history.get(row["id"], []), clock, HISTORY * SAMPLE_SECONDS)
        return {"workers": rows, "runners": self.observer.runners(now), "window_minutes": HISTORY * SAMPLE_SECONDS / 60}

    def agents(self) -> list[Doc]:
        """Every agent with its usage in the current period against its quotas, and its memory."""
        docs = self.observer.directory.all()[:AGENTS_SHOWN]
        policies = {d["_id"]: _policy(d) for d in docs}
        keys = {name: period_window(name, p.quota_period).key for name, p in policies.items() if p is not None}
        wanted = [*keys.values(), *(memory_key(name) for name in policies)]
        found = {d["_id"]: d for d in self.store.db[COUNTERS].find({"_id": {"$in": wanted}})}
        return [_agent_row(d, policies[d["_id"]], found.get(keys.get(d["_id"], "")), found) for d in docs]

    def audit(self, count: int = 100) -> tuple[list[Doc], AuditCheck | None]:
        """The latest ``count`` audit records, newest first, and the latest verification.

        Someone looking at the log gets a fresh verification soon: an older one
        than :data:`RECHECK_SECONDS` wakes the verifying job (which runs apart,
        so the page never waits for a walk over a long chain).
        """
        with self._lock:
            check = self._audit
        if check is None or (utcnow() - check.at).total_seconds() > RECHECK_SECONDS:
            self._recheck.set()
        return list(reversed(latest(self.store.audit, count))), check

    def approvals(self) -> list[Doc]:
        """Calls waiting for a human, as ``aiosd approvals --json`` lists them."""
        return [_pending_row(d) for d in _approvals(self.store, self.settings).pending()]

    def decide(self, ident: str, approve: bool, reason: str | None) -> Doc:
        """Approve or deny a parked call as this console's operator (audited under :attr:`actor`)."""
        return _approvals(self.store, self.settings).decide(ident, approve, self.actor, reason)

    # -- jobs ------------------------------------------------------------------------

    def _sample(self) -> float:
        clock = time.time()
        for row in self.observer.workers(utcnow()):
            load = row["in_flight"] / row["capacity"] if row["state"] != "dead" and row["capacity"] else 0.0
            with self._lock:
                self._load.setdefault(row["id"], deque(maxlen=HISTORY)).append((clock, load))
        return SAMPLE_SECONDS

    def _verify(self) -> float:
        started = time.monotonic()
        try:
            check = AuditCheck(utcnow(), verify(self.store.audit, audit_key(self.settings)))
        except AiosdError as exc:
            check = AuditCheck(utcnow(), None, str(exc))
        with self._lock:
            self._audit = check
        # A long chain is walked less often: the database serves the scheduler first.
        return max(VERIFY_SECONDS, 10 * (time.monotonic() - started))


def _policy(doc: Doc) -> Policy | None:
    try:
        return Policy.model_validate(doc.get("policy") or {})
    except ValidationError:
        return None  # a hand-edited document: shown without quotas


def _agent_row(doc: Doc, policy: Policy | None, period: Doc | None, found: dict[str, Doc]) -> Doc:
    usage = usage_row(period or {"agent": doc["_id"]})
    memory = found.get(memory_key(doc["_id"])) or {}
    return {
        **usage,
        "agent": doc["_id"],
        "disabled": bool(doc.get("disabled")),
        "period": policy.quota_period if policy else None,
        "tokens_quota": policy.tokens_per_period if policy else None,
        "requests_quota": policy.requests_per_period if policy else None,
        "notes": int(memory.get("notes") or 0),
        "notes_quota": policy.memory_notes if policy else None,
        "memory_bytes": int(memory.get("bytes") or 0),
        "memory_bytes_quota": policy.memory_bytes if policy else None,
    }
