"""``aiosd runner``: take tasks from the task queue and run their agent programs.

The main thread owns a pika connection that consumes :data:`TASK_QUEUE` with a
prefetch of ``capacity``: each message (a task id) stays unacknowledged while
its task runs, so a runner that dies hands its tasks back to RabbitMQ. Programs
run on a thread pool; their syscalls go through one SDK client (the runner's
own broker identity) bound to the task by its lease. A heartbeat thread renews
the leases of running tasks and stops programs whose lease is gone.

For each message: ``task.start`` says run (with a lease), skip (the task is
final: acknowledge) or wait (another runner's lease is still live, or the
batch is at its limit: ask again later, keeping the message). A program's
output or error is reported with ``task.finish``; only then is the message
acknowledged. On SIGTERM the runner stops taking messages, lets running
programs finish for up to ``shutdown_timeout`` seconds, and closes: RabbitMQ
redelivers whatever it did not finish.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from aiosd.sdk.client import Client
from aiosd.sdk.errors import CallError, ServiceUnavailable
from aiosd.sdk.process import metrics
from aiosd.sdk.process.lifecycle import Lifecycle
from aiosd.sdk.process.logs import get_logger
from aiosd.sdk.process.settings import Settings
from aiosd.sdk.programs import Program, ProgramContext, TaskLost
from aiosd.sdk.protocol import MAX_PRIORITY
from aiosd.sdk.tasks import TASK_QUEUE, TaskBinding, TaskError, TaskStart

log = get_logger(__name__)

AMQP_ERRORS = (pika.exceptions.AMQPError, OSError)
#: Longest pause before asking ``task.start`` again about a task another runner holds.
MAX_WAIT = 5.0


@dataclass
class Running:
    """A task whose program runs here."""

    ctx: ProgramContext
    started: float


class TaskRunner:
    """Runs up to ``capacity`` tasks at once until asked to stop."""

    def __init__(self, settings: Settings, lifecycle: Lifecycle, programs: dict[str, Program]) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.programs = programs
        self.capacity = settings.runner_capacity
        self.runner_id = settings.worker_id or f"{socket.gethostname()}-runner-{os.getpid()}"
        self._client: Client | None = None
        self._conn: pika.BlockingConnection | None = None
        self._ch: BlockingChannel | None = None
        self._pool = ThreadPoolExecutor(self.capacity, thread_name_prefix="aiosd-task")
        self._running: dict[str, Running] = {}
        self._lock = threading.Lock()
        self._busy = 0

    # -- the main thread -----------------------------------------------------------

    def run(self) -> None:
        """Connect, consume, run tasks; drain on stop."""
        self._client = Client(
            self.settings.amqp_url,
            timeout=self.settings.task_call_timeout,
            connect_timeout=self.settings.connect_timeout,
        )
        self._connect()
        assert self._ch is not None and self._conn is not None
        tag = self._ch.basic_consume(TASK_QUEUE, self._on_message, auto_ack=False)
        beats = threading.Thread(target=self._heartbeats, name="aiosd-task-heartbeat", daemon=True)
        beats.start()
        metrics.serve("runner", self.settings.metrics_host, self.settings.metrics_port)
        metrics.RUNNER_CAPACITY.set(self.capacity)
        metrics.gauge_from(metrics.RUNNER_RUNNING, lambda: len(self._running))
        self.lifecycle.ready()
        log.info("runner_ready", capacity=self.capacity, programs=sorted(self.programs), agent=self._client.agent)
        try:
            while not self.lifecycle.stop_requested.is_set():
                self._conn.process_data_events(time_limit=0.5)
                self.lifecycle.tick()
            self.lifecycle.stopping()
            self._ch.basic_cancel(tag)
            self._drain()
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._close()
        log.info("runner_stopped")

    def _connect(self) -> None:
        params = pika.URLParameters(self.settings.amqp_url)
        params.heartbeat = 30
        params.client_properties = {"connection_name": "aiosd-runner"}
        deadline = time.monotonic() + self.settings.connect_timeout
        while True:
            try:
                self._conn = pika.BlockingConnection(params)
                self._ch = self._conn.channel()
                self._ch.queue_declare(TASK_QUEUE, durable=True, arguments={"x-max-priority": MAX_PRIORITY})
                self._ch.basic_qos(prefetch_count=self.capacity)
                return
            except AMQP_ERRORS as exc:
                if time.monotonic() >= deadline or self.lifecycle.stop_requested.is_set():
                    raise ServiceUnavailable(f"RabbitMQ: the runner cannot consume {TASK_QUEUE}: {exc!r}") from exc
                time.sleep(1.0)

    def _drain(self) -> None:
        """Let running programs finish (up to ``shutdown_timeout``), pumping the connection for their acks."""
        assert self._conn is not None
        deadline = time.monotonic() + self.settings.shutdown_timeout
        while self._busy and time.monotonic() < deadline:
            self._conn.process_data_events(time_limit=0.2)
        if self._busy:
            # What is still running is abandoned, not failed: RabbitMQ hands it to another
            # runner, which replays it from its last completed call.
            with self._lock:
                for running in self._running.values():
                    running.ctx.lost.set()
            log.warning("runner_drain_timeout", tasks=self._busy)

    def _close(self) -> None:
        for closing in (self._conn, self._client):
            try:
                if closing is not None:
                    closing.close()
            except Exception:  # closing a broken connection: nothing left to save
                log.debug("close_failed", exc_info=True)

    def _on_message(self, _ch: BlockingChannel, method: Basic.Deliver, _props: BasicProperties, body: bytes) -> None:
        tag = int(method.delivery_tag or 0)
        try:
            task_id = str(json.loads(body)["task"])
        except (ValueError, KeyError, TypeError):
            log.error("task_message_unreadable", body=body[:200].decode("utf-8", "replace"))
            self._settle(tag, ack=True)
            return
        with self._lock:
            self._busy += 1
        self._pool.submit(self._take, task_id, tag)

    def _settle(self, tag: int, ack: bool) -> None:
        """Acknowledge (or hand back) a task message; safe from any thread."""
        conn, ch = self._conn, self._ch
        if conn is None or ch is None:
            return

        def settle() -> None:
            if ch.is_open:
                if ack:
                    ch.basic_ack(tag)
                else:
                    ch.basic_nack(tag, requeue=True)

        try:
            conn.add_callback_threadsafe(settle)
        except AMQP_ERRORS:
            log.warning("task_settle_lost", tag=tag)  # the connection is gone: RabbitMQ redelivers

    # -- task threads ----------------------------------------------------------------

    def _take(self, task_id: str, tag: int) -> None:
        try:
            self._settle(tag, ack=self._serve(task_id))
        except Exception:
            log.exception("task_crashed", task=task_id)
            self._settle(tag, ack=False)
        finally:
            with self._lock:
                self._busy -= 1

    def _serve(self, task_id: str) -> bool:
        """Run the task if ``task.start`` lets us; whether its message is done with."""
        client = self._require_client()
        while True:
            start = TaskStart.model_validate(client.call("task.start", {"id": task_id}))
            if start.action == "skip":
                log.info("task_skipped", task=task_id, reason=start.reason)
                return True
            if start.action == "run":
                self._execute(task_id, start)
                return True
            if self.lifecycle.stop_requested.is_set():
                return False  # stopping: hand the message back
            time.sleep(min(max(start.retry_after, 0.1), MAX_WAIT))

    def _execute(self, task_id: str, start: TaskStart) -> None:
        assert start.lease is not None and start.agent is not None and start.program is not None
        client = self._require_client()
        ctx = ProgramContext(
            task_id=task_id,
            agent=start.agent,
            attempt=start.attempt,
            input=start.input,
            binding=TaskBinding(id=task_id, lease=start.lease),
            sender=client,
            priority=start.priority,
            timeout=self.settings.task_call_timeout,
        )
        with self._lock:
            self._running[task_id] = Running(ctx, time.monotonic())
        try:
            output, error = self._run_program(start.program, ctx)
        finally:
            with self._lock:
                self._running.pop(task_id, None)
        metrics.RUNNER_SYSCALLS.inc(ctx.usage.syscalls)
        if ctx.lost.is_set():
            log.warning("task_lost", task=task_id, attempt=start.attempt)
            metrics.RUNNER_TASKS.labels("lost").inc()
            return
        finish: dict[str, Any] = {"id": task_id, "lease": start.lease, "usage": ctx.usage.model_dump()}
        if error is not None:
            finish["error"] = error.model_dump()
        else:
            finish["output"] = output
        done = client.call("task.finish", finish)
        metrics.RUNNER_TASKS.labels("failed" if error is not None else "succeeded").inc()
        log.info("task_done", task=task_id, program=start.program, state=done.get("state"), attempt=start.attempt)

    def _run_program(self, name: str, ctx: ProgramContext) -> tuple[Any, TaskError | None]:
        program = self.programs.get(name)
        if program is None:
            return None, TaskError(code="unknown_program", message=f"no program {name!r} is installed on this runner")
        try:
            output = program(ctx)
            json.dumps(output)  # the output must travel as JSON
        except TaskLost:
            return None, None
        except CallError as exc:
            return None, TaskError(code=exc.code, message=exc.message[:4000])
        except (TypeError, ValueError) as exc:
            return None, TaskError(code="program_error", message=f"{type(exc).__name__}: {exc}"[:4000])
        except Exception as exc:  # the program's own bug: the task fails, the runner goes on
            log.exception("program_failed", task=ctx.task_id, program=name)
            return None, TaskError(code="program_error", message=f"{type(exc).__name__}: {exc}"[:4000])
        return output, None

    def _heartbeats(self) -> None:
        every = min(max(self.settings.task_lease_ttl / 3, 0.2), 10.0)
        while True:
            if self.lifecycle.stop_requested.wait(every):
                if not self._busy:
                    return
                time.sleep(every)  # draining: running tasks still need their leases
            with self._lock:
                held = [r.ctx.binding for r in self._running.values()]
            beat = {
                "leases": [b.model_dump() for b in held],
                "runner_id": self.runner_id,
                "capacity": self.capacity,
                "programs": sorted(self.programs)[:256],
            }
            try:
                answer = self._require_client().call("task.heartbeat", beat, timeout=every * 2)
            except Exception as exc:  # a missed beat: the lease has two more before it runs out
                log.warning("task_heartbeat_failed", error=f"{type(exc).__name__}: {exc}")
                continue
            for task_id in answer.get("lost") or []:
                with self._lock:
                    running = self._running.get(task_id)
                if running is not None:
                    running.ctx.lost.set()

    def _require_client(self) -> Client:
        if self._client is None:
            raise ServiceUnavailable("the runner is not connected")
        return self._client
