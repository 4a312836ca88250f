"""Runs a workload's lanes of programs against a backend (the simulators directly, or aiosd).

Times are kept in simulated seconds: wall seconds since the run started
divided by the simulators' time scale, so they read as on real GPUs (the
kernel's own wall-clock overhead is stretched by the same factor: a
conservative reading for aiosd).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from aiosd.sdk.aio import AsyncClient

from .workloads import Lane, Program, Workload

Messages = list[dict[str, Any]]


@dataclass
class Answer:
    """What one LLM call returned."""

    text: str
    worker: str
    prompt_tokens: int
    cached_tokens: int
    queue_s: float = 0.0  # wall seconds the call waited in aiosd's queue (0 when direct)


@dataclass
class CallRecord:
    """One LLM call as the program saw it (simulated seconds)."""

    pid: str
    kind: str
    start: float
    end: float
    answer: Answer


@dataclass
class ProgramRecord:
    """One program: when it arrived (or its lane reached it) and when its last step ended."""

    pid: str
    kind: str
    start: float
    end: float


@dataclass
class RunRecord:
    """Everything one run produced."""

    programs: list[ProgramRecord] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Backend(Protocol):
    """Makes one LLM call for a program."""

    async def chat(self, program: Program, messages: Messages, max_tokens: int) -> Answer: ...


class Direct:
    """No kernel: each call goes round robin to the simulators' OpenAI-compatible API."""

    def __init__(self, urls: list[str]) -> None:
        self._urls = itertools.cycle(urls)
        self._http = httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=2000))
        self._names = {url: f"gpu{i}" for i, url in enumerate(urls)}

    async def chat(self, program: Program, messages: Messages, max_tokens: int) -> Answer:
        url = next(self._urls)
        body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
        response = await self._http.post(f"{url}/v1/chat/completions", json=body)
        response.raise_for_status()
        data = response.json()
        usage = data["usage"]
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        text = data["choices"][0]["message"]["content"]
        return Answer(text, self._names[url], int(usage["prompt_tokens"]), cached)

    async def close(self) -> None:
        await self._http.aclose()


class Kernel:
    """Through aiosd: ``llm.chat`` as the program's agent, with its program id and priority."""

    def __init__(self, clients: dict[str, AsyncClient]) -> None:
        self._clients = clients

    async def chat(self, program: Program, messages: Messages, max_tokens: int) -> Answer:
        client = self._clients[program.agent]
        args = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
        reply = await client.request("llm.chat", args, program=program.pid, priority=program.priority, timeout=900)
        if reply.status.value != "ok":
            raise RuntimeError(f"{program.pid}: {reply.error}")
        result = reply.result
        return Answer(
            str(result["text"]),
            str(result["worker"]),
            reply.usage.prompt_tokens,
            reply.usage.cached_tokens,
            reply.timings.queue_ms / 1000.0,
        )


class Run:
    """One workload against one backend, on the simulators' clock."""

    def __init__(self, workload: Workload, backend: Backend, time_scale: float) -> None:
        self.workload = workload
        self.backend = backend
        self.scale = time_scale
        self.record = RunRecord()
        self._t0 = 0.0

    def now(self) -> float:
        """Simulated seconds since the run started."""
        return (asyncio.get_running_loop().time() - self._t0) / self.scale

    async def sleep_until(self, t: float) -> None:
        delay = (t - self.now()) * self.scale
        if delay > 0:
            await asyncio.sleep(delay)

    async def go(self) -> RunRecord:
        """Run every lane to its end (programs already started finish: nothing is left in flight)."""
        self._t0 = asyncio.get_running_loop().time()
        await asyncio.gather(*(self._lane(lane) for lane in self.workload.lanes))
        return self.record

    async def _lane(self, lane: Lane) -> None:
        await self.sleep_until(lane.start)
        for n, program in enumerate(lane.programs):
            if lane.until is not None and self.now() >= lane.until:
                return
            start = lane.start if n == 0 else self.now()
            try:
                await self._program(program)
            except Exception as exc:  # a failed call is reported, not fatal to the run
                self.record.errors.append(f"{program.pid}: {exc!r}")
                return
            self.record.programs.append(ProgramRecord(program.pid, program.kind, start, self.now()))

    async def _program(self, program: Program) -> None:
        messages: Messages = [{"role": "system", "content": program.system}]
        said = program.task
        for step in program.steps:
            messages.append({"role": "user", "content": f"{said} [[sim:out={step.output}]]"})
            answers = await asyncio.gather(*(self._call(program, messages, step.output, j) for j in range(step.fanout)))
            messages.append({"role": "assistant", "content": answers[0].text})
            await asyncio.sleep(step.gap * self.scale)  # the tool runs
            said = f"Observation: {step.observation}"

    async def _call(self, program: Program, messages: Messages, output: int, branch: int) -> Answer:
        if branch:  # the parallel calls of a map step differ in their last words
            last = messages[-1]
            messages = [*messages[:-1], {"role": "user", "content": f"Branch {branch}. {last['content']}"}]
        start = self.now()
        answer = await self.backend.chat(program, messages, output + 32)
        self.record.calls.append(CallRecord(program.pid, program.kind, start, self.now(), answer))
        return answer
