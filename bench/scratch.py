"""What the benchmark starts and must remove: scratch vhosts, databases and child processes.

Everything is registered on one :class:`Scratch` (a context manager) the
moment it exists, and torn down in reverse order on exit, whether the run
finished, failed or was interrupted (SIGTERM is turned into
``KeyboardInterrupt`` by ``bench/kernel.py``). Children are stopped by their
own pid only (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import pymongo
import pymongo.errors

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Ports:
    """Where the development services listen (moved with the same env vars as the tests)."""

    amqp: int = int(os.environ.get("AIOSD_AMQP_PORT", "5672"))
    mgmt: int = int(os.environ.get("AIOSD_AMQP_MGMT_PORT", "15672"))
    mongo: int = int(os.environ.get("AIOSD_MONGO_PORT", "27017"))

    @property
    def mongo_url(self) -> str:
        return f"mongodb://{HOST}:{self.mongo}/"


@dataclass
class Child:
    """A process the bench started, with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ready_line(self, marker: str) -> str:
        """The first log line containing ``marker`` (empty if none yet)."""
        for line in self.log.read_text(errors="replace").splitlines():
            if marker in line:
                return line
        return ""

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL (idempotent)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass(frozen=True)
class Env:
    """One scratch vhost and database: an isolated aiosd installation on the shared services."""

    name: str
    amqp_url: str
    mongo_url: str
    db: str

    def aiosd_env(self, **extra: str) -> dict[str, str]:
        """Environment for an ``aiosd`` child of this installation."""
        env = dict(os.environ)  # AIOSD_* tuning (threads, prefetch, ...) passes through
        env.update(AIOSD_AMQP_URL=self.amqp_url, AIOSD_MONGO_URL=self.mongo_url, AIOSD_MONGO_DB=self.db)
        env.update(AIOSD_LOG_FORMAT="json", AIOSD_TRUST_SCHEDULER_USER="true")
        env.update(extra)
        return env


class Scratch:
    """Creates scratch installations and children; removes all of them on exit."""

    def __init__(self, ports: Ports | None = None) -> None:
        self.ports = ports or Ports()
        self.logs = Path(tempfile.mkdtemp(prefix="aiosd-bench-"))
        self._mgmt = httpx.Client(base_url=f"http://{HOST}:{self.ports.mgmt}/api", auth=("guest", "guest"), timeout=30)
        self.mongo_url = self.ports.mongo_url
        self._mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(self.mongo_url)
        self._undo = contextlib.ExitStack()
        self.failed = False

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self._undo.close()
        finally:
            self._mgmt.close()
            self._mongo.close()
            if kind is None and not self.failed:
                shutil.rmtree(self.logs, ignore_errors=True)
            else:
                print(f"logs kept in {self.logs}", file=sys.stderr)

    def private_database(self, shared_pid: int) -> int:
        """Start a database server of our own, like the shared one but on a free port and scratch files.

        The same binary and flags as the running process ``shared_pid``
        (FerretDB as ``scripts/services.sh`` starts it), with its state
        directory and listen address replaced; every later :meth:`env` uses
        it. Returns its pid; it is stopped and its files removed on exit.
        """
        exe = os.readlink(f"/proc/{shared_pid}/exe")
        flags = [f.decode() for f in Path(f"/proc/{shared_pid}/cmdline").read_bytes().split(b"\0")[1:] if f]
        old = next((f.split("=", 1)[1] for f in flags if f.startswith("--state-dir=")), None)
        if old is None:
            raise RuntimeError(f"cannot tell where pid {shared_pid} keeps its files: {flags}")
        state = Path(tempfile.mkdtemp(prefix="aiosd-bench-db-"))
        self._undo.callback(shutil.rmtree, state, True)
        (state / "data").mkdir()
        port = _free_port()
        flags = [
            f"--listen-addr={HOST}:{port}" if f.startswith("--listen-addr=") else f.replace(old, str(state))
            for f in flags
        ]
        child = self.start("database", [exe, *flags], dict(os.environ), ready="", timeout=30)
        self.mongo_url = f"mongodb://{HOST}:{port}/"
        self._mongo.close()
        self._mongo = pymongo.MongoClient(self.mongo_url)
        deadline = time.monotonic() + 30
        while True:
            try:
                self._mongo.admin.command("ping")
                return child.pid
            except pymongo.errors.PyMongoError:
                if time.monotonic() > deadline or child.proc.poll() is not None:
                    self.failed = True
                    raise RuntimeError(f"the private database server did not start; see {child.log}") from None
                time.sleep(0.1)

    @property
    def mongo(self) -> pymongo.MongoClient[dict[str, Any]]:
        return self._mongo

    def env(self, label: str) -> Env:
        """A new vhost (guest may do everything in it) and database, both removed on exit."""
        name = f"aiosd-bench-{label}-{uuid.uuid4().hex[:6]}"
        db = name.replace("-", "_")
        self._undo.callback(self._mongo.drop_database, db)
        self._mgmt.put(f"/vhosts/{name}").raise_for_status()
        self._undo.callback(self._mgmt.delete, f"/vhosts/{name}")
        perms = {"configure": ".*", "write": ".*", "read": ".*"}
        self._mgmt.put(f"/permissions/{name}/guest", json=perms).raise_for_status()
        url = f"amqp://guest:guest@{HOST}:{self.ports.amqp}/{quote(name, safe='')}"
        return Env(name=name, amqp_url=url, mongo_url=self.mongo_url, db=db)

    def start(self, name: str, argv: list[str], env: dict[str, str], ready: str, timeout: float = 120.0) -> Child:
        """Start ``argv`` (stdout and stderr to a log) and wait for ``ready`` in its log (if not empty)."""
        log = self.logs / f"{name}-{uuid.uuid4().hex[:6]}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        child = Child(name, proc, log)
        self._undo.callback(child.stop)
        deadline = time.monotonic() + timeout
        while ready and not child.ready_line(ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.failed = True
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise RuntimeError(f"{name} did not become ready (exit {proc.poll()}); {log}:\n{tail}")
            time.sleep(0.05)
        return child

    def aiosd(self, command: str, env: Env, *flags: str, **extra: str) -> Child:
        """``aiosd <command>`` (scheduler, worker) in ``env``, waited for until it logs ``<command>_ready``."""
        argv = [sys.executable, "-m", "aiosd.daemon.admin.cli", command, *flags]
        return self.start(command, argv, env.aiosd_env(**extra), f"{command}_ready")

    def script(self, name: str, *args: str, env: Env | None = None) -> Child:
        """One of the bench's own helper scripts (``echo.py``, ``standin.py``), waited for ``<name>_ready``."""
        argv = [sys.executable, str(BENCH_DIR / f"{name}.py"), *args]
        return self.start(name, argv, env.aiosd_env() if env else dict(os.environ), f"{name}_ready", timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])
