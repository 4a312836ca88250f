"""Test harness: real RabbitMQ vhosts, real MongoDB databases, real scheduler processes.

Every test world gets its own vhost and database, so tests never see each
other's queues or records, and both are removed afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pika
import pymongo

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
AMQP_PORT = int(os.environ.get("AIOSD_AMQP_PORT", "5672"))
MGMT_PORT = int(os.environ.get("AIOSD_AMQP_MGMT_PORT", "15672"))
MONGO_PORT = int(os.environ.get("AIOSD_MONGO_PORT", "27017"))
MONGO_URL = f"mongodb://{HOST}:{MONGO_PORT}/"
ADMIN = ("guest", "guest")


def management() -> httpx.Client:
    """A client for RabbitMQ's management HTTP API."""
    return httpx.Client(base_url=f"http://{HOST}:{MGMT_PORT}/api", auth=ADMIN, timeout=10)


@dataclass
class World:
    """One isolated vhost + database pair."""

    name: str = field(default_factory=lambda: f"aiosd-test-{uuid.uuid4().hex[:10]}")

    @property
    def vhost(self) -> str:
        return self.name

    @property
    def db_name(self) -> str:
        return self.name.replace("-", "_")

    def amqp_url(self, user: str = "guest", password: str = "guest") -> str:
        return f"amqp://{user}:{password}@{HOST}:{AMQP_PORT}/{quote(self.vhost, safe='')}"

    def create(self) -> World:
        with management() as api:
            api.put(f"/vhosts/{quote(self.vhost, safe='')}").raise_for_status()
            perms = {"configure": ".*", "write": ".*", "read": ".*"}
            api.put(f"/permissions/{quote(self.vhost, safe='')}/guest", json=perms).raise_for_status()
        return self

    def destroy(self) -> None:
        with management() as api:
            api.delete(f"/vhosts/{quote(self.vhost, safe='')}")
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(MONGO_URL)
        client.drop_database(self.db_name)
        client.close()

    def db(self) -> pymongo.database.Database[dict[str, Any]]:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(MONGO_URL, tz_aware=True)
        return client[self.db_name]

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for an aiosd process bound to this world."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIOSD_")}
        env.update(
            AIOSD_AMQP_URL=self.amqp_url(),
            AIOSD_AMQP_ADMIN_URL=f"http://{HOST}:{MGMT_PORT}",
            AIOSD_MONGO_URL=MONGO_URL,
            AIOSD_MONGO_DB=self.db_name,
            AIOSD_LOG_FORMAT="json",
            AIOSD_CONNECT_TIMEOUT="20",
            AIOSD_METRICS_PORT="0",  # tests run many processes at once: no fixed ports (metrics tests pick one)
        )
        env.update(extra)
        return env

    def pika(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(pika.URLParameters(self.amqp_url()))

    def queue_depth(self, queue: str) -> int:
        with management() as api:
            r = api.get(f"/queues/{quote(self.vhost, safe='')}/{queue}")
            r.raise_for_status()
            return int(r.json().get("messages", 0))


def aiosd_command(*args: str) -> list[str]:
    """The argv that runs the installed ``aiosd`` CLI with this interpreter."""
    return [sys.executable, "-m", "aiosd.daemon.admin.cli", *args]


class SchedulerProcess:
    """An ``aiosd scheduler`` subprocess with its JSON log captured to a file."""

    def __init__(self, world: World, log_dir: Path, **settings: str) -> None:
        self.world = world
        self.log_path = log_dir / f"scheduler-{uuid.uuid4().hex[:6]}.log"
        self.env = world.env(**{f"AIOSD_{k.upper()}": str(v) for k, v in settings.items()})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> SchedulerProcess:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(aiosd_command("scheduler"), env=self.env, stdout=self._log, stderr=self._log)
        if wait:
            self.wait_for("scheduler_ready")
        return self

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def wait_for(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events():
                if e.get("event") == event:
                    return e
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"scheduler exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            time.sleep(0.1)
        raise AssertionError(f"no {event!r} from the scheduler in {timeout}s:\n{self.log_path.read_text()}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()


def completed_records(db: pymongo.database.Database[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stored outcome of every completed syscall: its ``results`` document (with ``reply``)."""
    return list(db["results"].find({}))


def completed_count(db: pymongo.database.Database[dict[str, Any]]) -> int:
    """How many syscalls are completed."""
    return db["results"].count_documents({})


def live_after_retirement(
    db: pymongo.database.Database[dict[str, Any]], query: dict[str, Any], timeout: float = 5.0
) -> int:
    """Live records matching ``query`` once sent replies had time to retire theirs (retired in batches)."""
    deadline = time.monotonic() + timeout
    while (live := db["syscalls"].count_documents(query)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return live


def lifetime_usage(
    db: pymongo.database.Database[dict[str, Any]], agent: str, timeout: float = 5.0
) -> dict[str, Any] | None:
    """An agent's lifetime LLM totals once written (the scheduler writes them every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while (doc := db["usage"].find_one({"_id": agent})) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return doc


def unfinished_count(db: pymongo.database.Database[dict[str, Any]]) -> int:
    """Live syscalls (in ``syscalls``) that have no result yet: accepted and not completed."""
    live = [d["_id"] for d in db["syscalls"].find({}, {"_id": 1})]
    if not live:
        return 0
    done = db["results"].count_documents({"_id": {"$in": live}})
    return len(live) - done


class WorkerProcess(SchedulerProcess):
    """An ``aiosd worker`` subprocess (``worker_id`` fixed) with its JSON log captured to a file."""

    def __init__(self, world: World, log_dir: Path, worker_id: str | None = None, **settings: str) -> None:
        super().__init__(world, log_dir, **settings)
        self.worker_id = worker_id or f"w-{uuid.uuid4().hex[:6]}"
        self.env["AIOSD_WORKER_ID"] = self.worker_id
        self.log_path = log_dir / f"worker-{self.worker_id}.log"

    def start(self, wait: bool = True, *args: str) -> WorkerProcess:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(aiosd_command("worker", *args), env=self.env, stdout=self._log, stderr=self._log)
        if wait:
            self.wait_for("worker_ready", timeout=60.0)
        return self


#: A directory holding a test-only tool package (``*.dist-info`` with ``aiosd.tools`` entry points).
TEST_TOOLS = ROOT / "tests" / "toolpkg"


def with_test_tools(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the test tools installed (on PYTHONPATH), for schedulers and tool runners."""
    paths = [str(TEST_TOOLS), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class ToolsProcess(SchedulerProcess):
    """An ``aiosd tools`` subprocess (``worker_id`` fixed), with the test tools installed."""

    def __init__(self, world: World, log_dir: Path, worker_id: str | None = None, **settings: str) -> None:
        super().__init__(world, log_dir, **settings)
        self.worker_id = worker_id or f"tools-{uuid.uuid4().hex[:6]}"
        self.env["AIOSD_WORKER_ID"] = self.worker_id
        with_test_tools(self.env)
        self.log_path = log_dir / f"tools-{self.worker_id}.log"

    def start(self, wait: bool = True, *args: str) -> ToolsProcess:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(aiosd_command("tools", *args), env=self.env, stdout=self._log, stderr=self._log)
        if wait:
            self.wait_for("worker_ready", timeout=60.0)
        return self


class RunnerProcess(SchedulerProcess):
    """An ``aiosd runner`` subprocess acting as the broker user of ``amqp_url``."""

    def __init__(self, world: World, log_dir: Path, amqp_url: str, **settings: str) -> None:
        super().__init__(world, log_dir, **settings)
        self.env["AIOSD_AMQP_URL"] = amqp_url
        with_test_tools(self.env)  # the test programs live in the test tool package
        self.log_path = log_dir / f"runner-{uuid.uuid4().hex[:6]}.log"

    def start(self, wait: bool = True, *args: str) -> RunnerProcess:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(aiosd_command("runner", *args), env=self.env, stdout=self._log, stderr=self._log)
        if wait:
            self.wait_for("runner_ready", timeout=60.0)
        return self


# -- agents (identities with policies) -------------------------------------------------

MGMT_URL = f"http://{HOST}:{MGMT_PORT}"


def aiosd_cli(
    world: World, *args: str, input: str | None = None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run an ``aiosd`` CLI command bound to ``world`` (and the management API); never raises on exit codes."""
    full_env = world.env(AIOSD_AMQP_ADMIN_URL=MGMT_URL, **{f"AIOSD_{k.upper()}": v for k, v in env.items()})
    return subprocess.run(
        aiosd_command(*args), env=full_env, input=input, capture_output=True, text=True, timeout=timeout
    )


class AgentRegistry:
    """Creates agents in a world with ``aiosd agents add`` and deletes their broker users afterwards.

    Broker users are global (not per vhost), so names get a random prefix and
    :meth:`cleanup` removes every user this registry made.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.prefix = f"t{uuid.uuid4().hex[:6]}-"
        self.names: list[str] = []

    def name(self, short: str) -> str:
        """The full (unique) agent name for ``short``."""
        return f"{self.prefix}{short}"

    def add(self, short: str, *flags: str) -> str:
        """Create agent ``short`` with the given ``aiosd agents add`` flags; return its AMQP URL."""
        name = self.name(short)
        done = aiosd_cli(self.world, "agents", "add", name, "--json", *flags)
        assert done.returncode == 0, f"agents add {name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        self.names.append(name)
        return str(json.loads(done.stdout)["url"])

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run an ``aiosd`` command in this world."""
        return aiosd_cli(self.world, *args, **env)

    def cleanup(self) -> None:
        with management() as api:
            for name in self.names:
                api.delete(f"/users/{quote(name, safe='')}")
