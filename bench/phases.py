"""The four phases of ``bench/kernel.py``; each returns its measured runs.

(a) the broker ceiling: the SDK client against ``echo.py``, no database;
(b) memory and storage syscalls through aiosd (scheduler + database);
(c) ``llm.chat`` through aiosd (scheduler + ``aiosd worker --backend openai``)
    against the instant stand-in, and the worker's own backend code calling the
    stand-in directly at the same concurrency;
(d) ``memory.add`` on an empty database, then again after ``--history``
    completed syscalls were preloaded (``history.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from typing import Any

from history import preload
from load import Run, drive, drive_async
from procstat import CpuMeter
from scratch import HOST, Env, Scratch

from aiosd.sdk import Client
from aiosd.workers.backends import create_backend
from aiosd.workers.backends.base import ChatRequest, Message

AGENT = "guest"  # the scheduler's own broker user: see the docstring of kernel.py
MESSAGES = [{"role": "user", "content": "Reply with one short word."}]
LLM_ARGS = {"messages": MESSAGES, "max_tokens": 8, "temperature": 0.0}
_note_counter = itertools.count()


def add_args(i: int) -> dict[str, object]:
    """``memory.add`` arguments (unique contents, searchable words); also the echo phase's payload."""
    return {"content": f"benchmark note {next(_note_counter)} about queues, leases and replies", "tags": ["bench"]}


def _meter(base: CpuMeter, **children: int) -> CpuMeter:
    meter = CpuMeter(dict(base.pids))
    for name, pid in children.items():
        meter.add(name, pid)
    return meter


def _client(env: Env) -> Client:
    return Client(env.amqp_url, timeout=300)


def broker_ceiling(scratch: Scratch, args: argparse.Namespace, base: CpuMeter, prefetch: int) -> list[Run]:
    """(a) the same client against a consumer that answers at once."""
    env = scratch.env("echo")
    echo = scratch.script("echo", env.amqp_url, str(prefetch), env=env)
    meter = _meter(base, echo=echo.pid)
    try:
        with _client(env) as client:
            serial = drive(
                client,
                "memory.add",
                add_args,
                calls=args.serial_calls,
                concurrency=1,
                warmup=args.warmup,
                meter=meter,
                label="echo c=1",
            )
            full = drive(
                client,
                "memory.add",
                add_args,
                calls=args.calls,
                concurrency=args.concurrency,
                warmup=args.warmup,
                meter=meter,
                label="echo",
            )
    finally:
        echo.stop()
    return [serial, full]


def memory_storage(scratch: Scratch, args: argparse.Namespace, base: CpuMeter) -> list[Run]:
    """(b) memory.add (serial and concurrent), memory.get, memory.search, storage.write."""
    env = scratch.env("memory")
    scheduler = scratch.aiosd("scheduler", env)
    meter = _meter(base, scheduler=scheduler.pid)
    conc = {"calls": args.calls, "concurrency": args.concurrency, "warmup": args.warmup, "meter": meter}
    try:
        with _client(env) as client:
            runs = [
                drive(
                    client,
                    "memory.add",
                    add_args,
                    calls=args.serial_calls,
                    concurrency=1,
                    warmup=args.warmup,
                    meter=meter,
                    label="memory.add c=1",
                )
            ]
            runs.append(drive(client, "memory.add", add_args, **conc))
            note = client.memory.add("the seed note, fetched by id")
            runs.append(drive(client, "memory.get", lambda i: {"id": note.id}, **conc))
            search_conc = {**conc, "calls": args.search_calls, "warmup": 0}  # ranking reads every note: slow
            search = drive(client, "memory.search", lambda i: {"query": "queues leases", "limit": 5}, **search_conc)
            search.notes["notes_searched"] = scratch.mongo[env.db]["memory"].count_documents({"agent": AGENT})
            runs.append(search)
            runs.append(
                drive(client, "storage.write", lambda i: {"path": f"bench/{i}.txt", "text": f"file {i}"}, **conc)
            )
    finally:
        scheduler.stop()
    return runs


def llm_chat(scratch: Scratch, args: argparse.Namespace, base: CpuMeter) -> list[Run]:
    """(c) llm.chat on the instant backend: direct, then through aiosd at the same concurrency."""
    standin = scratch.script("standin")
    url = f"http://{HOST}:{standin.ready_line('standin_ready').split()[-1]}/v1"
    n = args.llm_calls or args.calls
    direct = asyncio.run(_direct(url, n, args, _meter(base, standin=standin.pid)))
    env = scratch.env("llm")
    scheduler = scratch.aiosd("scheduler", env)
    worker = scratch.aiosd(
        "worker",
        env,
        "--backend",
        "openai",
        "--backend-url",
        url,
        "--capacity",
        str(args.llm_concurrency),
        AIOSD_WORKER_ID="bench-worker",
    )
    meter = _meter(base, scheduler=scheduler.pid, worker=worker.pid, standin=standin.pid)
    try:
        with _client(env) as client:
            serial = drive(
                client,
                "llm.chat",
                lambda i: LLM_ARGS,
                calls=min(args.serial_calls, n),
                concurrency=1,
                warmup=args.warmup,
                meter=meter,
                label="llm.chat c=1",
            )
            full = drive(
                client,
                "llm.chat",
                lambda i: LLM_ARGS,
                calls=n,
                concurrency=args.llm_concurrency,
                warmup=args.warmup,
                meter=meter,
                label="llm.chat",
            )
    finally:
        worker.stop()
        scheduler.stop()
        standin.stop()
    return [direct, serial, full]


async def _direct(url: str, calls: int, args: argparse.Namespace, meter: CpuMeter) -> Run:
    # The worker's own backend, built as workers/config.py builds it for --backend openai (backend_stream=auto).
    backend = create_backend("openai", url=url, model=None, stream=None)
    await backend.start()
    request = ChatRequest(messages=tuple(Message(**m) for m in MESSAGES), max_tokens=8, temperature=0.0)

    async def one(_i: int) -> None:
        await backend.chat(request)

    try:
        return await drive_async(
            one, calls=calls, concurrency=args.llm_concurrency, warmup=args.warmup, meter=meter, label="direct backend"
        )
    finally:
        await backend.close()


def with_history(scratch: Scratch, args: argparse.Namespace, base: CpuMeter, state: dict[str, Any]) -> list[Run]:
    """(d) memory.add on an empty database, then on one holding ``--history`` completed syscalls.

    The two databases are made in the first round (``state`` keeps them) and
    every round runs both, one after the other (so from the second round on
    the "empty" one holds the earlier rounds' few thousand calls).
    """
    if not state:
        state["empty"], state["full"] = scratch.env("history-empty"), scratch.env("history")
        db = scratch.mongo[state["full"].db]
        print(f"   preloading {args.history} completed syscalls into {db.name} ...", file=sys.stderr, flush=True)

        def progress(done: int, secs: float) -> None:
            if done % 20000 == 0 or done == args.history:
                print(f"   {done:>7} / {args.history} in {secs:.0f}s", file=sys.stderr, flush=True)

        state["preload_s"] = round(preload(db, AGENT, args.history, progress=progress), 1)
    empty = _adds(scratch, state["empty"], args, base, "memory.add empty db")
    full = _adds(scratch, state["full"], args, base, f"memory.add +{_short(args.history)} history")
    full.notes.update(
        history=args.history,
        preload_s=state["preload_s"],
        results_in_db=scratch.mongo[state["full"].db]["results"].estimated_document_count(),
    )
    return [empty, full]


def _adds(scratch: Scratch, env: Env, args: argparse.Namespace, base: CpuMeter, label: str) -> Run:
    """``memory.add`` at ``--concurrency`` through a scheduler of its own on ``env``."""
    scheduler = scratch.aiosd("scheduler", env)
    try:
        with _client(env) as client:
            return drive(
                client,
                "memory.add",
                add_args,
                calls=args.calls,
                concurrency=args.concurrency,
                warmup=args.warmup,
                meter=_meter(base, scheduler=scheduler.pid),
                label=label,
            )
    finally:
        scheduler.stop()


def _short(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)
