"""The pure parts of the refusal statistics: the rate, range checks, local time buckets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.outcomes.dashboard.board import bucket_labels
from services.outcomes.stats import StatsRequestError, check_range, rate, sqlite_bucket


def test_rate_is_refused_over_completed_and_refused() -> None:
    assert rate(3, 7) == 0.3 and rate(0, 5) == 0.0 and rate(2, 0) == 1.0 and rate(0, 0) is None


def test_range_must_be_forward_and_not_too_fine() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    check_range(start=start, end=start + timedelta(days=30), group_by="hour")
    with pytest.raises(StatsRequestError, match="before"):
        check_range(start=start, end=start, group_by="reason")
    with pytest.raises(StatsRequestError, match="buckets"):
        check_range(start=start, end=start + timedelta(days=2), group_by="minute")


@pytest.mark.parametrize(
    ("stored", "unit", "tz", "label"),
    [
        ("2026-03-10 16:30:00.000000", "day", "Asia/Shanghai", "2026-03-11"),
        ("2026-03-10 16:30:00.000000", "day", "UTC", "2026-03-10"),
        ("2026-03-10 16:30:59.999999", "minute", "Asia/Shanghai", "2026-03-11T00:30"),
        ("2026-03-10 16:30:00", "hour", "Asia/Kolkata", "2026-03-10T22:00"),
        ("2026-07-01 03:00:00", "day", "America/New_York", "2026-06-30"),  # daylight saving time
        ("2026-03-10 16:30:59.999999", "10s", "Asia/Shanghai", "2026-03-11T00:30:50"),
        ("2026-03-10 16:30:00", "10s", "Asia/Kolkata", "2026-03-10T22:00:00"),
    ],
)
def test_sqlite_buckets_are_local(stored: str, unit: str, tz: str, label: str) -> None:
    assert sqlite_bucket(stored, unit, tz) == label


def test_bucket_labels_cover_the_window_without_gaps_or_repeats() -> None:
    end = datetime(2026, 3, 10, 12, 0, 30, tzinfo=UTC)
    minutes = bucket_labels(start=end - timedelta(hours=1), end=end, unit="minute", tz="Asia/Shanghai")
    days = bucket_labels(start=end - timedelta(days=30), end=end, unit="day", tz="Asia/Shanghai")
    assert len(minutes) == 61 and minutes[0] == "2026-03-10T19:00" and minutes[-1] == "2026-03-10T20:00"
    assert len(days) == 31 and days[-1] == "2026-03-10" and len(set(days)) == 31
    just_begun = bucket_labels(
        start=end - timedelta(hours=24, seconds=1), end=end - timedelta(seconds=1), unit="hour", tz="UTC"
    )
    assert just_begun[0] == "2026-03-09T12:00" and just_begun[-1] == "2026-03-10T12:00" and len(just_begun) == 25
