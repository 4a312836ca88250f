"""``react``: a ReAct-style agent that reasons with the LLM, calls tools and keeps notes in memory.

Input: ``{"question": "...", "max_steps": 3}`` or just the question.
Output: ``{"answer": str, "steps": [{"thought", "action", "observation"}], "notes": [note ids]}``.

Each step asks the model for a ``Thought`` and either an ``Action: <tool>: <input>``
or a ``Final Answer``. Small models rarely keep to that format, so a step
whose reply names no known action falls back to what the question itself
asks for: an arithmetic expression in it goes to the ``calculator`` tool.
Every observation is stored as a memory note (tag ``react``), and what the
agent remembered about the question before is recalled first. All of this is
decided from the input and the replies only, so a re-run replays exactly.
"""

from __future__ import annotations

import re
from typing import Any

from aiosd.sdk.errors import CallError
from aiosd.sdk.programs import ProgramContext

#: Tools the agent knows how to call, with the one argument each takes.
TOOLS = {"calculator": "expression"}
ACTION = re.compile(r"Action:\s*(\w+)\s*:\s*(.+)", re.IGNORECASE)
FINAL = re.compile(r"Final Answer:\s*(.+)", re.IGNORECASE | re.DOTALL)
ARITHMETIC = re.compile(r"[-+(]*\d[\d\s.+\-*/%()]*[\d)]")

SYSTEM = (
    "Answer the question. You may use the tool calculator for arithmetic.\n"
    "Reply with:\nThought: <your reasoning>\nAction: calculator: <expression>\n"
    "or, when you know the answer:\nThought: <your reasoning>\nFinal Answer: <the answer>"
)


def react(ctx: ProgramContext) -> dict[str, Any]:
    """Answer ``ctx.input``'s question in at most ``max_steps`` steps."""
    question, max_steps = _read(ctx.input)
    recalled = ctx.recall(question, k=3) if _has_notes(ctx) else []
    context = "\n".join(f"Note: {n.get('content', '')}" for n in recalled)
    transcript = f"{context}\nQuestion: {question}".strip()
    steps: list[dict[str, Any]] = []
    notes: list[str] = []
    for _ in range(max_steps):
        reply = ctx.chat(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": transcript}],
            max_tokens=96,
            temperature=0.0,
        )
        final = FINAL.search(reply)
        if final and steps:
            return _done(final.group(1), steps, notes)
        tool, tool_input = _action(reply, question, steps)
        if tool is None:
            break
        observation = _observe(ctx, tool, tool_input)
        steps.append({"thought": _thought(reply), "action": f"{tool}: {tool_input}", "observation": observation})
        notes.append(ctx.remember(f"{question} -> {tool}({tool_input}) = {observation}", tags=["react"]))
        transcript += f"\nAction: {tool}: {tool_input}\nObservation: {observation}"
    answer = steps[-1]["observation"] if steps else _thought(reply)
    return _done(answer, steps, notes)


def _action(reply: str, question: str, steps: list[dict[str, Any]]) -> tuple[str | None, str]:
    """The tool call the reply asks for, else the one the question implies (once)."""
    found = ACTION.search(reply)
    if found and found.group(1).lower() in TOOLS:
        return found.group(1).lower(), found.group(2).strip().splitlines()[0]
    if steps:
        return None, ""
    expression = ARITHMETIC.search(question)
    if expression and any(op in expression.group(0) for op in "+-*/%"):
        return "calculator", expression.group(0).strip()
    return None, ""


def _observe(ctx: ProgramContext, tool: str, tool_input: str) -> str:
    try:
        result = ctx.tool(tool, {TOOLS[tool]: tool_input})
    except CallError as exc:
        if exc.code not in ("invalid_args", "tool_failed"):
            raise
        return f"error: {exc.message}"
    value = result.get("value") if isinstance(result, dict) else result
    return str(value)


def _has_notes(ctx: ProgramContext) -> bool:
    # memory.search needs a query with a word in it; a question of digits only has none.
    return bool(re.search(r"[A-Za-z]{3}", str(ctx.input)))


def _thought(reply: str) -> str:
    match = re.search(r"Thought:\s*(.+)", reply)
    return " ".join((match.group(1) if match else reply).split())[:300]


def _done(answer: str, steps: list[dict[str, Any]], notes: list[str]) -> dict[str, Any]:
    return {"answer": " ".join(answer.split())[:500], "steps": steps, "notes": notes}


def _read(task_input: Any) -> tuple[str, int]:
    if isinstance(task_input, str):
        return task_input, 3
    if isinstance(task_input, dict) and isinstance(task_input.get("question"), str):
        steps = task_input.get("max_steps", 3)
        return task_input["question"], max(1, min(steps, 8)) if isinstance(steps, int) else 3
    raise ValueError('input must be the question, or {"question": "...", "max_steps": N}')
