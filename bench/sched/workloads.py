"""The three workloads of issue 13, as lanes of agent programs (all times in simulated seconds).

A *program* is a ReAct-like agent run: a system prompt, a task, then steps;
each step is one LLM call (or ``fanout`` parallel calls, a map step) on the
whole conversation so far, then a tool gap (the tool's running time), then
the tool's observation joins the conversation. The simulator's model stops
each answer after the step's ``output`` tokens (``[[sim:out=N]]``), a length
the scheduler cannot see, as with a real model.

A *lane* runs programs back to back from its start time; a lane with
``until`` starts no program after that time (a closed loop of agents),
otherwise it runs its programs and ends (an open arrival).

(a) ``agents``: ``agents`` lanes of programs of ``steps`` steps, ``types``
    program types, each with its own long system prompt (tenants of a shared
    fleet), tool gaps of random length.
(b) ``backlog``: fewer agent lanes, plus lanes of cheap batch programs kept
    busy all run long, plus a trickle of single interactive priority-9
    calls (Poisson); the same trickle alone is the unloaded baseline.
(c) ``lengths``: a few long programs (parallel map steps, long answers) from
    the start, and many short ones arriving over the run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

#: Vocabulary of the generated texts: 4-5 byte words, so ~1 simulated token each.
WORDS = [f"{a}{b}{c}" for a in "bcdfghklmnprstvz" for b in "aeiou" for c in "dgklmnrstx"]


@dataclass(frozen=True)
class Step:
    """One step: the calls on the conversation so far, then a tool gap and its observation."""

    output: int
    gap: float
    observation: str
    fanout: int = 1


@dataclass(frozen=True)
class Program:
    """One agent run."""

    pid: str
    kind: str  # agent, batch, interactive, long, short
    agent: str  # the identity it runs as (a role: agents, batch, desk, research, support)
    system: str
    task: str
    steps: tuple[Step, ...]
    priority: int = 0


@dataclass
class Lane:
    """Programs run back to back from ``start``; none starts after ``until``."""

    start: float
    programs: list[Program]
    until: float | None = None


@dataclass
class Workload:
    """A named set of lanes; ``measure`` names the kinds whose figures the report shows."""

    name: str
    title: str
    lanes: list[Lane] = field(default_factory=list)
    duration: float = 0.0


@dataclass(frozen=True)
class Sizes:
    """Workload sizes (the bench's command line sets them)."""

    agents: int = 64
    types: int = 48
    steps: int = 3
    system_tokens: int = 6000
    observation_tokens: int = 600
    output_tokens: int = 60
    gap: tuple[float, float] = (0.3, 1.5)
    duration: float = 12.0
    seed: int = 13


class Texts:
    """Deterministic random texts of a given size in simulated tokens."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def words(self, tokens: int) -> str:
        return " ".join(self.rng.choices(WORDS, k=max(tokens, 1)))


def agents(sizes: Sizes) -> Workload:
    """(a) Closed loop: ``agents`` lanes of agent programs for ``duration`` seconds."""
    texts = Texts(sizes.seed)
    systems = [f"Agent type {t}. " + texts.words(sizes.system_tokens) for t in range(sizes.types)]
    work = Workload("a", f"(a) {sizes.agents} agents, {sizes.steps}-step programs, {sizes.types} system prompts")
    work.duration = sizes.duration
    per_lane = int(sizes.duration / (sizes.steps * sizes.gap[0])) + 2
    for lane in range(sizes.agents):
        programs = [_agent(texts, systems, sizes, f"a{lane}-{n}", lane % sizes.types) for n in range(per_lane)]
        work.lanes.append(Lane(start=texts.rng.uniform(0, sizes.gap[1]), programs=programs, until=sizes.duration))
    return work


def _agent(texts: Texts, systems: list[str], sizes: Sizes, pid: str, kind: int, agent: str = "agents") -> Program:
    steps = tuple(
        Step(
            output=sizes.output_tokens,
            gap=texts.rng.uniform(*sizes.gap),
            observation=texts.words(int(sizes.observation_tokens * texts.rng.uniform(0.5, 1.5))),
        )
        for _ in range(sizes.steps)
    )
    return Program(pid, "agent", agent, systems[kind], f"Task {pid}: " + texts.words(40), steps, priority=0)


def backlog(sizes: Sizes, interactive_rate: float, batch_lanes: int, *, loaded: bool) -> Workload:
    """(b) Interactive priority-9 calls alone (``loaded=False``, a shorter run) or over agents and a batch backlog.

    The agents are a quarter of (a)'s lanes; the batch programs (a record
    to summarise, then a check) keep ``batch_lanes`` calls queued or running
    all the time: through aiosd that is a standing backlog in its queue.
    """
    texts = Texts(sizes.seed + 1)
    name = "b" if loaded else "b0"
    title = "(b) batch backlog + agents + interactive" if loaded else "(b0) interactive calls alone (unloaded)"
    duration = sizes.duration if loaded else min(sizes.duration, 6.0)
    work = Workload(name, title, duration=duration)
    desk = "You are the help desk. Answer briefly. " + texts.words(300)
    t = texts.rng.expovariate(interactive_rate)
    while t < duration:
        question = Program(f"i{len(work.lanes)}", "interactive", "desk", desk, texts.words(100), (Step(48, 0, ""),), 9)
        work.lanes.append(Lane(start=t, programs=[question]))
        t += texts.rng.expovariate(interactive_rate)
    if not loaded:
        return work
    systems = [f"Agent type {t}. " + texts.words(sizes.system_tokens) for t in range(sizes.types)]
    per_lane = int(sizes.duration / (sizes.steps * sizes.gap[0])) + 2
    for lane in range(sizes.agents // 4):
        programs = [_agent(texts, systems, sizes, f"ba{lane}-{n}", lane % sizes.types) for n in range(per_lane)]
        work.lanes.append(Lane(start=texts.rng.uniform(0, sizes.gap[1]), programs=programs, until=sizes.duration))
    batch = "You summarise records for the nightly report. " + texts.words(200)
    for lane in range(batch_lanes):
        programs = [_batch(texts, batch, f"bb{lane}-{n}") for n in range(int(sizes.duration))]
        work.lanes.append(Lane(start=0.0, programs=programs, until=sizes.duration))
    return work


def _batch(texts: Texts, system: str, pid: str) -> Program:
    steps = tuple(Step(output=100, gap=0.0, observation=texts.words(200)) for _ in range(2))
    return Program(pid, "batch", "batch", system, "Record: " + texts.words(600), steps, priority=0)


def lengths(sizes: Sizes, long_programs: int, fanout: int, shorts: int) -> Workload:
    """(c) A few long programs (parallel steps, long answers) and many short ones arriving over the run.

    The long programs' map steps keep more calls queued than the workers hold,
    so the order in which aiosd leases them decides who waits.
    """
    texts = Texts(sizes.seed + 2)
    # No fixed duration: the run ends when the last program does (throughput = programs / makespan).
    work = Workload("c", f"(c) {long_programs} long programs (x{fanout} parallel calls) and {shorts} short ones")
    research = "You are a research agent. Explore every lead in parallel. " + texts.words(800)
    for n in range(long_programs):
        steps = tuple(
            Step(output=384, gap=texts.rng.uniform(0.2, 0.8), observation=texts.words(300), fanout=fanout)
            for _ in range(3)
        )
        program = Program(f"L{n}", "long", "research", research, f"Study {n}: " + texts.words(60), steps)
        work.lanes.append(Lane(start=texts.rng.uniform(0, 1.0), programs=[program]))
    support = "You are a support agent. Solve the ticket with the tools. " + texts.words(400)
    t = 2.0
    for n in range(shorts):
        t += texts.rng.expovariate(shorts / (sizes.duration - 2.0))
        steps = tuple(
            Step(output=40, gap=texts.rng.uniform(0.2, 1.0), observation=texts.words(200))
            for _ in range(texts.rng.choice([1, 2, 3]))
        )
        program = Program(f"S{n}", "short", "support", support, f"Ticket {n}: " + texts.words(80), steps)
        work.lanes.append(Lane(start=t, programs=[program]))
    return work
