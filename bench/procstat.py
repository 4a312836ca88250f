"""CPU time of named processes from ``/proc/<pid>/stat``, sampled around a measured phase.

A process's CPU time is its ``utime + stime`` (fields 14 and 15 of
``/proc/<pid>/stat``, in clock ticks): every thread of the process, none of
its children. CPU per call is the difference between two samples divided by
the calls made in between; unlike wall-clock rates it hardly moves when other
work shares the machine (as long as that work does not run *in* the measured
processes: the shared RabbitMQ and database server also count what others
ask of them while a phase runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

TICK_MS = 1000.0 / os.sysconf("SC_CLK_TCK")
STATE_DIR = Path.home() / ".local" / "state" / "aiosd-dev"


def cpu_ms(pid: int) -> float | None:
    """CPU milliseconds ``pid`` has used so far (user + system), or ``None`` if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * TICK_MS


def service_pid(pidfile: Path, name: str) -> int:
    """The pid in ``pidfile`` if it runs a process whose command line mentions ``name``."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot find the {name} process from {pidfile}: {exc} (scripts/services.sh start?)") from exc
    if name not in cmdline:
        raise SystemExit(f"{pidfile} names pid {pid}, which is not {name}: {cmdline[:80]!r}")
    return pid


def broker_pid() -> int:
    """RabbitMQ's Erlang VM (``beam.smp``), as started by ``scripts/services.sh``."""
    return service_pid(STATE_DIR / "rabbitmq" / "rabbitmq.pid", "beam")


def database_pid() -> int:
    """The development database server (FerretDB), as started by ``scripts/services.sh``."""
    return service_pid(STATE_DIR / "ferretdb" / "ferretdb.pid", "ferretdb")


def machine_busy_ms() -> float:
    """CPU milliseconds every CPU of the machine has spent busy (not idle or waiting for I/O) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) * TICK_MS


@dataclass
class Sample:
    """CPU milliseconds of each named process, and of the whole machine, at one moment."""

    cpu: dict[str, float]
    machine: float = 0.0


@dataclass
class CpuMeter:
    """The processes of one phase, by role name (client, rabbitmq, database, scheduler, ...)."""

    pids: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, pid: int) -> None:
        """Measure ``pid`` as ``name`` from the next sample on."""
        self.pids[name] = pid

    def sample(self) -> Sample:
        """Read every process now; a process that is gone reads as 0."""
        return Sample({name: cpu_ms(pid) or 0.0 for name, pid in self.pids.items()}, machine_busy_ms())

    @staticmethod
    def per_call(before: Sample, after: Sample, calls: int) -> tuple[dict[str, float], float]:
        """CPU milliseconds per call of each process between two samples, and of everything else on the machine.

        The second figure is noise, not cost: what other work did meanwhile
        (outside the shared RabbitMQ and database server, whose share of it is
        in their own figures).
        """
        n = max(calls, 1)
        cpu = {name: max(after.cpu.get(name, 0.0) - used, 0.0) / n for name, used in before.cpu.items()}
        return cpu, max(after.machine - before.machine - sum(cpu.values()) * n, 0.0) / n
