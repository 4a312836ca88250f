"""Prometheus metrics of every aiosd process, defined once (names follow Prometheus conventions).

Each process serves its own registry on ``metrics_host:metrics_port``
(:func:`serve`); only the metrics a process updates move, the others stay at
zero. Label values are bounded sets (syscall names from the catalogue,
outcome and error codes, task states, models and agents as configured), so
the number of series stays small. This module needs ``prometheus-client``
(the ``daemon`` and ``worker`` extras); the plain SDK never imports it.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from aiosd.sdk.process.logs import get_logger

log = get_logger(__name__)

#: The port each kind of process serves its metrics on unless ``metrics_port`` says otherwise.
DEFAULT_PORTS = {"scheduler": 9710, "worker": 9711, "tools": 9712, "runner": 9713}

#: Seconds: from a millisecond to ten minutes (LLM calls in a queue can wait that long).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

# -- the scheduler -------------------------------------------------------------------

SYSCALLS = Counter("aiosd_syscalls_total", "Syscalls answered, by syscall and outcome.", ["syscall", "outcome"])
QUEUE_SECONDS = Histogram(
    "aiosd_syscall_queue_seconds", "Time a syscall waited before its work started.", ["family"], buckets=LATENCY_BUCKETS
)
RUN_SECONDS = Histogram("aiosd_syscall_run_seconds", "Time a syscall's work took.", ["family"], buckets=LATENCY_BUCKETS)
TOTAL_SECONDS = Histogram(
    "aiosd_syscall_duration_seconds", "Time from receipt to reply (queue + run).", ["family"], buckets=LATENCY_BUCKETS
)
BACKLOG = Gauge("aiosd_backlog_calls", "Leased-kind calls queued in the scheduler, waiting for a worker.")
LEASES = Gauge("aiosd_leases_held", "Calls leased to workers and not settled yet.")
TOKENS = Counter("aiosd_tokens_total", "LLM tokens, by model, agent and type.", ["model", "agent", "type"])
TASKS = Counter("aiosd_task_transitions_total", "Task state changes, by the state entered.", ["state"])
TASKS_RUNNING = Gauge("aiosd_tasks_running", "Tasks the scheduler holds a runner's lease for.")
BATCHES = Gauge("aiosd_batches", "Batches, by state (read from the database when scraped).", ["state"])
DEAD_LETTERS = Counter("aiosd_dead_letters_total", "Messages refused and dead-lettered, by reason.", ["reason"])
AUDIT_RECORDS = Gauge("aiosd_audit_records", "Records in the audit chain (its last sequence number).")
DATABASE_ERRORS = Counter("aiosd_database_errors_total", "Failed database operations the scheduler retried.")
BROKER_ERRORS = Counter("aiosd_broker_errors_total", "Broker connections lost (and re-established).")

# -- workers and tool runners --------------------------------------------------------

WORKER_IN_FLIGHT = Gauge("aiosd_worker_in_flight", "Calls the worker runs now.", ["kind"])
WORKER_CAPACITY = Gauge("aiosd_worker_capacity", "Calls the worker runs at once at most.", ["kind"])
WORKER_CALLS = Counter("aiosd_worker_calls_total", "Leased calls run, by outcome.", ["kind", "status"])
WORKER_TOKENS = Counter("aiosd_worker_tokens_total", "Tokens generated and read, by model and type.", ["model", "type"])
WORKER_HEALTHY = Gauge("aiosd_worker_healthy", "1 while the backend can serve.", ["kind"])

# -- task runners ----------------------------------------------------------------------

RUNNER_RUNNING = Gauge("aiosd_runner_tasks_running", "Tasks this runner runs now.")
RUNNER_CAPACITY = Gauge("aiosd_runner_capacity", "Tasks this runner runs at once at most.")
RUNNER_TASKS = Counter("aiosd_runner_tasks_total", "Tasks this runner ended, by outcome.", ["outcome"])
RUNNER_SYSCALLS = Counter("aiosd_runner_syscalls_total", "Syscalls programs made through this runner.")


def family_of(syscall: str) -> str:
    """The latency label of a syscall: its namespace (``memory``, ``llm``, ``task``, ...)."""
    return syscall.split(".", 1)[0] if syscall else "unknown"


def observe_reply(syscall: str, outcome: str, queue_ms: float, run_ms: float) -> None:
    """Count one answered syscall and its latencies."""
    SYSCALLS.labels(syscall or "unknown", outcome).inc()
    family = family_of(syscall)
    QUEUE_SECONDS.labels(family).observe(queue_ms / 1000.0)
    RUN_SECONDS.labels(family).observe(run_ms / 1000.0)
    TOTAL_SECONDS.labels(family).observe((queue_ms + run_ms) / 1000.0)


def gauge_from(gauge: Gauge, read: Callable[[], float]) -> None:
    """Read ``gauge`` from ``read`` when scraped (never raises out of a scrape)."""

    def safe() -> float:
        try:
            return float(read())
        except Exception:  # a scrape must not fail because one figure is unavailable
            return float("nan")

    gauge.set_function(safe)


def serve(kind: str, host: str, port: int | None) -> int | None:
    """Serve this process's metrics on ``host:port`` (default: the kind's port; 0: off); the port, or None."""
    chosen = DEFAULT_PORTS[kind] if port is None else port
    if chosen == 0:
        return None
    try:
        start_http_server(chosen, addr=host)
    except OSError as exc:  # metrics are worth a warning, not a process that will not start
        log.warning("metrics_not_served", port=chosen, host=host, error=str(exc))
        return None
    log.info("metrics_served", url=f"http://{host}:{chosen}/metrics")
    return chosen
