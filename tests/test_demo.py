"""`aiosd demo` (what `make run` runs) drives real agents through a scheduler and a CPU worker."""

from __future__ import annotations

import subprocess

from .harness import World, aiosd_command, management


def test_demo_runs_the_loop(world: World) -> None:
    names = [f"demo-{kind}-{i}" for i, kind in enumerate(("planner", "researcher", "shopper"))]
    try:
        run = subprocess.run(aiosd_command("demo"), env=world.env(), capture_output=True, text=True, timeout=600)
    finally:
        with management() as api:
            for name in names:
                api.delete(f"/users/{name}")
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "starting a scheduler" in out and "starting a worker" in out
    for name in names:
        assert name in out
    assert "got not_found: memory is" in out and "intact" in out
    assert "scheduler stopped with SIGTERM, exit code 0" in out and "worker stopped with SIGTERM, exit code 0" in out
    assert "task runner stopped with SIGTERM, exit code 0" in out
    db = world.db()
    # three sample agents, then the batch's six summarize tasks and the react task's LLM calls
    agents = db.results.count_documents({"syscall": "llm.chat", "reply.status": "ok", "program": {"$in": names}})
    assert agents == 3
    batch = db.batches.find_one({"name": "demo"})
    assert batch is not None and batch["counts"]["succeeded"] == 6 and batch["state"] == "finished", batch
    assert "6/6 done" in out and "text-6" in out
    react = db.tasks.find_one({"program": "react"})
    assert react is not None and react["state"] == "succeeded" and "391" in out, react
