"""Relevance ranking of memory notes: BM25 over content and tags.

BM25+ (``rank_bm25.BM25Plus``) rather than plain Okapi BM25 because its IDF
stays positive for terms found in most notes, which matters for an agent's
small memory (with one or two notes Okapi's IDF is negative for every term).
BM25+ gives every note a small floor score, so only notes sharing at least
one term with the query are returned. Tags count like words of the note,
twice, since an agent chose them to describe it.
"""

from __future__ import annotations

import re
from typing import Any

from rank_bm25 import BM25Plus

_WORD = re.compile(r"\w+", re.UNICODE)
TAG_WEIGHT = 2


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens."""
    return [w.lower() for w in _WORD.findall(text)]


def rank(query: str, docs: list[dict[str, Any]]) -> list[tuple[float, dict[str, Any]]]:
    """Score ``docs`` (notes with ``content``, ``tags``, ``created_at``) against ``query``, best first.

    Only notes sharing a term with the query are returned; ties go to the newer note.
    """
    terms = set(tokens(query))
    if not terms or not docs:
        return []
    corpus = [_doc_tokens(d) for d in docs]
    scores = BM25Plus(corpus).get_scores(list(terms))
    hits = [(float(score), doc) for score, doc, words in zip(scores, docs, corpus, strict=True) if terms & set(words)]
    hits.sort(key=lambda pair: (-pair[0], -pair[1]["created_at"].timestamp()))
    return hits


def _doc_tokens(doc: dict[str, Any]) -> list[str]:
    words = tokens(doc.get("content", ""))
    for tag in doc.get("tags", []):
        words.extend(tokens(tag) * TAG_WEIGHT)
    return words or ["\0"]  # BM25 needs a non-empty document
