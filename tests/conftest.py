"""Fixtures: services up once per run, an isolated world and scheduler per test."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import ROOT, AgentRegistry, SchedulerProcess, World

SERVICES = ROOT / "scripts" / "services.sh"


@pytest.fixture(scope="session", autouse=True)
def services() -> None:
    """Make sure RabbitMQ and the MongoDB-compatible server answer (idempotent)."""
    result = subprocess.run(["bash", str(SERVICES), "start"], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.exit(f"services did not start:\n{result.stdout}\n{result.stderr}", returncode=3)


@pytest.fixture
def world() -> Iterator[World]:
    """A fresh vhost and database for one test."""
    w = World().create()
    yield w
    w.destroy()


@pytest.fixture(scope="module")
def shared_world() -> Iterator[World]:
    """A vhost and database shared by one test module."""
    w = World().create()
    yield w
    w.destroy()


@pytest.fixture
def make_scheduler(tmp_path: Path, world: World) -> Iterator[type[SchedulerProcess]]:
    """Factory for scheduler processes in ``world``; all are stopped afterwards."""
    started: list[SchedulerProcess] = []

    def make(**settings: str) -> SchedulerProcess:
        proc = SchedulerProcess(world, tmp_path, **settings)
        started.append(proc)
        return proc

    yield make  # type: ignore[misc]
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def scheduler(shared_world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchedulerProcess]:
    """One running scheduler for a test module."""
    proc = SchedulerProcess(shared_world, tmp_path_factory.mktemp("scheduler")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def task_scheduler(
    request: pytest.FixtureRequest, shared_world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SchedulerProcess]:
    """One scheduler for a module of task tests; its task lease lasts the module's ``TASK_LEASE_TTL`` seconds."""
    ttl = str(getattr(request.module, "TASK_LEASE_TTL", 3))
    proc = SchedulerProcess(shared_world, tmp_path_factory.mktemp("tasks"), task_lease_ttl=ttl).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def runner_url(registry: AgentRegistry, task_scheduler: SchedulerProcess) -> str:
    """A task runner identity (broker user + runner policy) in the module's world."""
    return registry.add("runner", "--runner")


@pytest.fixture(scope="module")
def registry(shared_world: World) -> Iterator[AgentRegistry]:
    """Real agents (broker users + policies) in the module's world, removed afterwards."""
    reg = AgentRegistry(shared_world)
    yield reg
    reg.cleanup()
