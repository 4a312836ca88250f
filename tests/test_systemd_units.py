"""The systemd units in systemd/ pass `systemd-analyze verify` and keep their key settings.

`verify` fails when ExecStart's binary does not exist, and /opt/aiosd/bin/aiosd exists only on
an installed host. So the units are copied to a temporary directory with ExecStart pointing at
an executable that exists; everything else is verified as written. `verify` exits 0 on unknown
keys and bad values (it only warns), so the test also requires its output to be silent about
the units.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT_DIR = Path(__file__).resolve().parent.parent / "systemd"
UNITS = (
    "aiosd-scheduler.service",
    "aiosd-worker@.service",
    "aiosd-tools.service",
    "aiosd-runner.service",
    "aiosd-web.service",
    "aiosd.target",
)
INSTALLED_BINARY = "/opt/aiosd/bin/aiosd"


def directives(unit: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order; repeated keys are kept."""
    found: list[tuple[str, str, str]] = []
    section = ""
    for raw in (UNIT_DIR / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def values(unit: str, section: str, key: str) -> list[str]:
    return [v for s, k, v in directives(unit) if s == section and k == key]


@pytest.fixture(scope="module")
def verify_output(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (scripts/services.sh install provides it)")
    tmp = tmp_path_factory.mktemp("units")
    for unit in UNITS:
        text = (UNIT_DIR / unit).read_text()
        assert INSTALLED_BINARY in text or unit.endswith(".target"), unit
        (tmp / unit).write_text(text.replace(INSTALLED_BINARY, sys.executable))
    # The template is checked as written (instance "i") and as a real instance.
    paths = [str(tmp / unit) for unit in UNITS] + [str(tmp / "aiosd-worker@0.service")]
    return subprocess.run(
        [analyze, "verify", "--man=no", *paths],
        capture_output=True,
        text=True,
        cwd=tmp,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "cat"},
        timeout=60,
    )


def test_units_verify_cleanly(verify_output: subprocess.CompletedProcess[str]) -> None:
    output = verify_output.stdout + verify_output.stderr
    assert verify_output.returncode == 0, output
    about_units = [line for line in output.splitlines() if "aiosd" in line]
    assert about_units == [], output


def test_scheduler_is_a_notify_service_with_a_watchdog() -> None:
    unit = "aiosd-scheduler.service"
    assert values(unit, "Service", "Type") == ["notify"]
    assert values(unit, "Service", "WatchdogSec") != []
    assert values(unit, "Service", "RestartPreventExitStatus") == ["78"]


def test_scheduler_stops_later_than_the_daemon_deadline() -> None:
    # The daemon gives in-flight work 30 s; systemd must not SIGKILL it before that.
    (timeout,) = values("aiosd-scheduler.service", "Service", "TimeoutStopSec")
    assert int(timeout) > 30


def test_worker_template_pins_its_gpu() -> None:
    unit = "aiosd-worker@.service"
    assert values(unit, "Service", "Type") == ["notify"]
    env = " ".join(values(unit, "Service", "Environment"))
    assert "CUDA_VISIBLE_DEVICES=%i" in env
    assert "AIOSD_WORKER_ID=%H-gpu%i" in env
    assert values(unit, "Service", "PrivateDevices") == ["no"]


def test_tool_runner_is_a_sandboxed_notify_service() -> None:
    unit = "aiosd-tools.service"
    assert values(unit, "Service", "ExecStart") == ["/opt/aiosd/bin/aiosd tools"]
    assert values(unit, "Service", "Type") == ["notify"]
    assert values(unit, "Service", "WatchdogSec") != []
    assert values(unit, "Service", "RestartPreventExitStatus") == ["78"]
    (timeout,) = values(unit, "Service", "TimeoutStopSec")
    assert int(timeout) > 30
    assert values(unit, "Service", "User") == ["aiosd"]  # never root: root could lift the per-call rlimits
    assert "AIOSD_WORKER_ID=%H-tools" in " ".join(values(unit, "Service", "Environment"))
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome"):
        assert values(unit, "Service", key) == ["yes"], key
    assert values(unit, "Service", "ProtectSystem") == ["strict"]
    assert values(unit, "Install", "WantedBy") == ["aiosd.target"]


def test_target_pulls_in_the_scheduler_and_the_tool_runner() -> None:
    wants = " ".join(values("aiosd.target", "Unit", "Wants")).split()
    assert "aiosd-scheduler.service" in wants and "aiosd-tools.service" in wants
    assert values("aiosd.target", "Install", "WantedBy") == ["multi-user.target"]
