"""BM25 memory ranking puts the relevant note first on a small fixed corpus."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aiosd.daemon.services.memory.ranking import rank

T0 = datetime(2026, 1, 1, tzinfo=UTC)

CORPUS = [
    ("the quarterly report is due on friday", ["work"]),
    ("buy milk, bread and eggs on the way home", ["shopping"]),
    ("the printer on floor two is broken again", ["office"]),
    ("dentist appointment moved to tuesday at 9am", ["health"]),
    ("rabbitmq priority queues range from 0 to 9", ["notes"]),
    ("walk the dog before the standup", []),
    ("the standup moved to 10am for the whole team", ["calendar"]),
    ("password rotation is due every 90 days", ["security"]),
    ("sglang keeps prefixes in a radix cache", ["notes"]),
    ("book flights for the conference in june", ["travel"]),
]


def notes() -> list[dict[str, object]]:
    return [
        {"content": text, "tags": tags, "created_at": T0 + timedelta(minutes=i)}
        for i, (text, tags) in enumerate(CORPUS)
    ]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("when is the quarterly report due", "the quarterly report is due on friday"),
        ("standup time for the team", "the standup moved to 10am for the whole team"),
        ("dentist", "dentist appointment moved to tuesday at 9am"),
        ("how does the radix cache work", "sglang keeps prefixes in a radix cache"),
        ("shopping list", "buy milk, bread and eggs on the way home"),  # found by its tag
        ("conference travel", "book flights for the conference in june"),
    ],
)
def test_relevant_note_first(query: str, expected: str) -> None:
    ranked = rank(query, notes())
    assert ranked and ranked[0][1]["content"] == expected
    scores = [s for s, _ in ranked]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)


def test_notes_sharing_no_term_are_left_out() -> None:
    contents = [d["content"] for _, d in rank("dentist", notes())]
    assert contents == ["dentist appointment moved to tuesday at 9am"]
    assert rank("   ", notes()) == [] and rank("zebra", notes()) == []


def test_single_note_memory_still_ranks() -> None:
    only = notes()[:1]
    assert [d["content"] for _, d in rank("report", only)] == ["the quarterly report is due on friday"]
