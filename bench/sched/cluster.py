"""What the scheduling bench starts: four simulated GPUs, and aiosd (a scheduler, four sglang workers, agents).

Everything is registered on a :class:`~bench.scratch.Scratch` the moment it
exists and removed on exit (children by their own pid, the scratch vhost and
database, the broker users made for the agents).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx

from bench.scratch import HOST, Child, Env, Scratch

ROOT = Path(__file__).resolve().parents[2]
#: The identities programs run as (one broker user and policy each): fair shares are per agent.
ROLES = ("agents", "batch", "desk", "research", "support")


@dataclass
class Simulators:
    """``python -m bench.sim --count N`` in one child process."""

    child: Child
    urls: list[str]

    def reset(self) -> None:
        """Empty every prefix cache and zero the counters (between runs)."""
        for url in self.urls:
            httpx.post(f"{url}/sim/reset", json={"flush_cache": True}, timeout=30).raise_for_status()

    def stats(self) -> list[dict[str, float]]:
        """``/sim/stats`` of each simulated GPU."""
        return [httpx.get(f"{url}/sim/stats", timeout=30).json() for url in self.urls]

    def idle(self, timeout: float = 120.0) -> None:
        """Wait until no simulated GPU runs or queues anything (a run's calls are all answered)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s["running"] == 0 and s["queued"] == 0 for s in self.stats()):
                return
            time.sleep(0.2)


def start_simulators(scratch: Scratch, count: int, time_scale: float, cache_tokens: int) -> Simulators:
    """Start ``count`` simulated GPUs on free ports."""
    argv = [sys.executable, "-m", "bench.sim", "--count", str(count), "--port", "0", "--time-scale", str(time_scale)]
    argv += ["--cache-tokens", str(cache_tokens)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = scratch.start("simulators", argv, env, "bench.sim ready all", 60)
    lines = child.log.read_text().splitlines()
    urls = [line.split()[-1] for line in lines if line.startswith("bench.sim ready ") and "all" not in line]
    return Simulators(child, urls)


@dataclass
class Kernel:
    """aiosd in one scratch vhost and database, with an agent per role."""

    scratch: Scratch
    env: Env
    urls: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    users: list[str] = field(default_factory=list)

    def add_agents(self) -> None:
        """One agent per role, with a policy that lets the bench run: LLM calls only, no quota, priority 9."""
        policy = {
            "syscalls": ["llm.*"],
            "max_priority": 9,
            "tokens_per_period": None,
            "requests_per_period": None,
            "rate_limit": None,
            "max_concurrent_llm": None,
            "weight": 1.0,
        }
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
            json.dump(policy, file)
        prefix = f"bench-{uuid.uuid4().hex[:6]}"
        env = self.env.aiosd_env(AIOSD_AMQP_ADMIN_URL=f"http://{HOST}:{self.scratch.ports.mgmt}")
        for role in ROLES:
            name = f"{prefix}-{role}"
            argv = [sys.executable, "-m", "aiosd.daemon.admin.cli", "agents", "add", name, "--json", "--policy"]
            done = subprocess.run([*argv, file.name], env=env, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"aiosd agents add {name} failed:\n{done.stdout}\n{done.stderr}")
            self.users.append(name)
            self.urls[role] = str(json.loads(done.stdout)["url"])
        Path(file.name).unlink()

    def start(self, policy: str, routing: str, sims: Simulators, capacity: int, **settings: str) -> None:
        """A scheduler with ``policy`` and ``routing``, and one sglang worker per simulated GPU.

        The queue and the fleet of the previous configuration are dropped first: a call one of its
        leases left behind must not run (and take GPU time) in this one's runs.
        """
        db = self.scratch.mongo[self.env.db]
        for name in ("syscalls", "workers"):
            db[name].delete_many({})
        extra = {f"AIOSD_{k.upper()}": v for k, v in settings.items()}
        self.children.append(
            self.scratch.aiosd("scheduler", self.env, AIOSD_POLICY=policy, AIOSD_ROUTING=routing, **extra)
        )
        for i, url in enumerate(sims.urls):
            worker = self.scratch.aiosd(
                "worker",
                self.env,
                AIOSD_WORKER_ID=f"gpu{i}",
                AIOSD_BACKEND="sglang",
                AIOSD_BACKEND_URL=url,
                AIOSD_CAPACITY=str(capacity),
                AIOSD_HEARTBEAT_INTERVAL="1",
            )
            self.children.append(worker)

    def stop(self) -> None:
        """Stop the workers, then the scheduler (each by its own pid)."""
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def remove_agents(self) -> None:
        """Delete the broker users :meth:`add_agents` made (they are global, not in the scratch vhost)."""
        api = f"http://{HOST}:{self.scratch.ports.mgmt}/api/users/"
        for name in self.users:
            httpx.delete(api + quote(name, safe=""), auth=("guest", "guest"), timeout=30)
        self.users.clear()
