"""``summarize``: one text in, a short summary and its key words out (the typical overnight batch).

Input: ``{"text": "...", "max_words": 40}`` or just the text as a string.
Output: ``{"summary": str, "keywords": [str], "words": int, "finish": "llm"}``.
One ``llm.chat`` call per task; the key words are counted locally, so the
output is useful even from a very small model.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from aiosd.sdk.programs import ProgramContext

#: Words too common to be key words.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "from",
        "has",
        "have",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "will",
        "with",
        "which",
        "who",
        "not",
        "no",
        "can",
        "so",
        "if",
        "than",
        "then",
        "they",
        "their",
        "there",
        "these",
        "those",
        "we",
        "you",
        "he",
        "she",
        "his",
        "her",
        "our",
    ]
)
#: Characters of the text sent to the model (small models have small contexts).
MAX_CHARS = 4000


def summarize(ctx: ProgramContext) -> dict[str, Any]:
    """Summarize ``ctx.input``."""
    text, max_words = _read(ctx.input)
    prompt = [
        {"role": "system", "content": "You write one-sentence summaries."},
        {"role": "user", "content": f"Summarize in at most {max_words} words:\n\n{text[:MAX_CHARS]}"},
    ]
    summary = " ".join(ctx.chat(prompt, max_tokens=min(max_words * 2, 128), temperature=0.0).split())
    words = summary.split()
    if len(words) > max_words:
        summary = " ".join(words[:max_words])
    return {"summary": summary, "keywords": keywords(text), "words": len(text.split()), "finish": "llm"}


def keywords(text: str, k: int = 5) -> list[str]:
    """The ``k`` most frequent words of ``text`` that are not stop words (ties: first seen)."""
    found = [w for w in re.findall(r"[a-z][a-z0-9'-]{2,}", text.lower()) if w not in STOPWORDS]
    return [w for w, _ in Counter(found).most_common(k)]


def _read(task_input: Any) -> tuple[str, int]:
    if isinstance(task_input, str):
        return task_input, 40
    if isinstance(task_input, dict) and isinstance(task_input.get("text"), str):
        max_words = task_input.get("max_words", 40)
        return task_input["text"], max(5, min(int(max_words), 200)) if isinstance(max_words, int) else 40
    raise ValueError('input must be the text, or {"text": "...", "max_words": N}')
