"""The simple memory ranking puts the relevant note first."""

from __future__ import annotations

from datetime import datetime, timezone

from aiosd.daemon.memory import rank

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def note(content: str, *tags: str) -> dict[str, object]:
    return {"content": content, "tags": list(tags), "created_at": T0}


def test_relevant_note_first_and_unrelated_left_out() -> None:
    docs = [
        note("buy milk and bread"),
        note("the quarterly report is due on friday", "work"),
        note("report the broken printer"),
        note("walk the dog"),
    ]
    ranked = [d["content"] for _, d in rank("when is the quarterly report due", docs)]
    assert ranked[0] == "the quarterly report is due on friday"
    assert "buy milk and bread" not in ranked


def test_tags_count_and_empty_query_matches_nothing() -> None:
    docs = [note("groceries", "shopping"), note("meeting notes", "work")]
    assert [d["content"] for _, d in rank("shopping", docs)] == ["groceries"]
    assert rank("   ", docs) == []
