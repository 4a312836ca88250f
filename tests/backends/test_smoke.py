"""The GPU-host smoke test (``python -m aiosd.workers.smoke``) passes against the SGLang contract server."""

from __future__ import annotations

import subprocess
import sys

from sglang_contract import ContractServer


def test_smoke_passes_against_sglang_contract(contract: ContractServer) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "aiosd.workers.smoke", "--backend", "sglang", "--url", contract.url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert [line.split()[1] for line in lines] == [
        "health",
        "settings",
        "model_info",
        "metrics",
        "chat",
        "concurrent",
        "time",
    ]
    assert all(line.startswith("PASS") for line in lines) and "identical text" in lines[-1]
