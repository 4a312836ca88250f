"""Soak the SDK: one client making calls continuously, its connections killed now and then.

Starts a scheduler in a scratch vhost and database (both removed afterwards),
drives it from one :class:`~aiosd.sdk.Client` shared by a few threads for
``--duration`` seconds, closes the client's connections from the broker side
(management API) every ``--kill-every`` seconds, and prints what happened:

    .venv/bin/python bench/soak.py --duration 1800 --kill-every 300

Every call must complete: the run exits non-zero if any call failed or timed
out, or if the database holds a different number of notes than calls completed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import pymongo

from aiosd.sdk import Client

HOST = "127.0.0.1"


class Tally:
    """Counters shared by the calling threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.made = self.completed = self.failed = 0
        self.errors: list[str] = []
        self.slowest = 0.0

    def done(self, seconds: float, error: BaseException | None) -> None:
        with self.lock:
            self.made += 1
            if error is None:
                self.completed += 1
                self.slowest = max(self.slowest, seconds)
            else:
                self.failed += 1
                if len(self.errors) < 20:
                    self.errors.append(f"{type(error).__name__}: {error}")


def kill_client_connections(mgmt: httpx.Client, vhost: str, which: str) -> int:
    """Close the SDK's connections in ``vhost`` (``publish``, ``replies`` or both) from the broker side."""
    killed = 0
    for conn in mgmt.get(f"/vhosts/{quote(vhost, safe='')}/connections").json():
        name = (conn.get("client_properties") or {}).get("connection_name", "")
        if name.startswith("aiosd-sdk") and (which == "both" or name.endswith(which)):
            r = mgmt.delete(f"/connections/{quote(conn['name'], safe='')}", headers={"X-Reason": "soak test"})
            killed += r.status_code in (200, 204)
    return killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of calls")
    parser.add_argument("--kill-every", type=float, default=300.0, help="seconds between broker-side kills")
    parser.add_argument("--threads", type=int, default=4, help="calling threads sharing the client")
    parser.add_argument("--rate", type=float, default=100.0, help="target calls/s in all (0: as fast as possible)")
    parser.add_argument("--heartbeat", type=int, default=None, help="AMQP heartbeat of the client, s")
    parser.add_argument(
        "--scheduler-path", default=None, help="PYTHONPATH holding the aiosd the scheduler runs (default: this one)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = parser.parse_args()
    mgmt = httpx.Client(
        base_url=f"http://{HOST}:{os.environ.get('AIOSD_AMQP_MGMT_PORT', '15672')}/api", auth=("guest", "guest")
    )
    vhost = f"aiosd-soak-{uuid.uuid4().hex[:8]}"
    db_name = vhost.replace("-", "_")
    mongo_url = f"mongodb://{HOST}:{os.environ.get('AIOSD_MONGO_PORT', '27017')}/"
    mgmt.put(f"/vhosts/{vhost}").raise_for_status()
    mgmt.put(f"/permissions/{vhost}/guest", json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
    url = f"amqp://guest:guest@{HOST}:{os.environ.get('AIOSD_AMQP_PORT', '5672')}/{quote(vhost, safe='')}"
    proc = start_scheduler(url, mongo_url, db_name, args.scheduler_path)
    try:
        figures = soak(url, mgmt, vhost, args)
        notes = pymongo.MongoClient(mongo_url)[db_name]["memory"].count_documents({})
        figures["notes_stored"] = notes
    finally:
        proc.terminate()
        proc.wait(60)
        mgmt.delete(f"/vhosts/{vhost}")
        pymongo.MongoClient(mongo_url).drop_database(db_name)
    for key, value in figures.items():
        print(f"{key:16} {value}")
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=2))
    ok = figures["failed"] == 0 and figures["completed"] == figures["made"] == notes
    sys.exit(0 if ok else 1)


def soak(url: str, mgmt: httpx.Client, vhost: str, args: argparse.Namespace) -> dict[str, object]:
    tally = Tally()
    stop = threading.Event()
    pause = args.threads / args.rate if args.rate > 0 else 0.0
    kills: list[str] = []
    with Client(url, timeout=300, heartbeat=args.heartbeat) as client:

        def caller(n: int) -> None:
            i = 0
            while not stop.is_set():
                start = time.monotonic()
                error: BaseException | None = None
                try:
                    client.memory.add(f"soak note {n}-{i} about queues and heartbeats", tags=["soak"])
                except Exception as exc:
                    error = exc
                elapsed = time.monotonic() - start
                tally.done(elapsed, error)
                i += 1
                if pause > elapsed:
                    stop.wait(pause - elapsed)

        threads = [threading.Thread(target=caller, args=(n,), daemon=True) for n in range(args.threads)]
        started = time.monotonic()
        for t in threads:
            t.start()
        next_kill = started + args.kill_every
        which = ["both", "publish", "replies"]
        while (now := time.monotonic()) < started + args.duration:
            if now >= next_kill:
                target = which[len(kills) % len(which)]
                count = kill_client_connections(mgmt, vhost, target)
                kills.append(f"{now - started:.0f}s:{target}:{count}")
                print(
                    f"[{now - started:7.0f}s] killed {count} client connection(s) ({target}); "
                    f"{tally.completed} calls completed so far",
                    flush=True,
                )
                next_kill += args.kill_every
            time.sleep(min(1.0, max(0.0, next_kill - now)))
        stop.set()
        for t in threads:
            t.join(330)
        wall = time.monotonic() - started
        stats = client.connection_stats
    return {
        "duration_s": round(wall, 1),
        "made": tally.made,
        "completed": tally.completed,
        "failed": tally.failed,
        "calls_per_s": round(tally.completed / wall, 1),
        "slowest_call_s": round(tally.slowest, 2),
        "kills": kills,
        "reconnects": stats.reconnects,
        "republished": stats.republished,
        "recovered": stats.recovered,
        "errors": tally.errors,
    }


def start_scheduler(url: str, mongo_url: str, db: str, path: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``aiosd scheduler`` on ``url`` and ``db`` (from ``path`` if given); return once it is ready."""
    env = {
        **os.environ,
        "AIOSD_AMQP_URL": url,
        "AIOSD_MONGO_URL": mongo_url,
        "AIOSD_MONGO_DB": db,
        "AIOSD_LOG_FORMAT": "json",
    }
    if path:
        env["PYTHONPATH"] = path  # e.g. a `git archive` of a known-good commit while the tree is being changed
    log = Path(tempfile.gettempdir()) / f"{db}.log"
    out = log.open("wb")
    cmd = [sys.executable, "-m", "aiosd.daemon.admin.cli", "scheduler", "--log-level", "INFO"]
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 60
    while "scheduler_ready" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"scheduler did not start; see {log}")
        time.sleep(0.1)
    return proc


if __name__ == "__main__":
    main()
