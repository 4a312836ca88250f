"""Quota arithmetic: rate windows, quota periods and their keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiosd.daemon.access.counters import PERIOD_FIELDS, memory_key, period_amounts, period_window, rate_window


def test_a_rate_window_is_fixed_and_kept_one_window_past_its_end() -> None:
    t = datetime(2026, 1, 1, 0, 0, 59, 999000, tzinfo=UTC)
    w = rate_window("alice", 60, t)
    assert w.key == f"alice:rate60:{int(t.timestamp() // 60)}"
    assert rate_window("alice", 60, t + timedelta(milliseconds=1)).key != w.key  # the next minute
    assert rate_window("alice", 60, t - timedelta(seconds=59)).key == w.key
    assert w.expires_at == datetime(2026, 1, 1, 0, 2, tzinfo=UTC)


def test_hour_day_and_month_periods_are_labelled_in_utc() -> None:
    t = datetime(2026, 6, 30, 23, 30, tzinfo=UTC)
    assert period_window("a", "hour", t).key == "a:hour:2026-06-30T23"
    assert period_window("a", "day", t).key == "a:day:2026-06-30"
    assert period_window("a", "month", t).key == "a:month:2026-06"
    assert period_window("a", "day", t).expires_at == datetime(2026, 7, 2, tzinfo=UTC)


def test_a_local_time_falls_in_its_utc_period() -> None:
    from datetime import timezone

    local = datetime(2026, 7, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))  # 2026-06-30 23:00 UTC
    assert period_window("a", "day", local).label == "2026-06-30"


def test_months_roll_over_the_year_and_are_kept_one_more_month() -> None:
    december = period_window("a", "month", datetime(2026, 12, 15, tzinfo=UTC))
    assert december.label == "2026-12"
    assert december.expires_at == datetime(2027, 2, 1, tzinfo=UTC)


def test_period_increments_touch_every_field() -> None:
    amounts = period_amounts(requests=1, prompt_tokens=5)
    assert set(amounts) == set(PERIOD_FIELDS)
    assert amounts["requests"] == 1 and amounts["prompt_tokens"] == 5
    assert sum(amounts.values()) == 6
    assert memory_key("alice") == "alice:memory"
