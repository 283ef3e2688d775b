"""The bench's pure helpers: the zone where the policy lets timers fire, and which figures get a ratio."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bench.common import POLICY, Figure, calling_zone
from services.scheduler.planner import is_calling_day
from shared.policy import load_policy

POLICY_ON = load_policy(POLICY)


@pytest.mark.parametrize("hour", range(24))
def test_on_a_working_day_the_bench_zone_is_in_calling_hours_whatever_the_hour(hour: int) -> None:
    now = datetime(2026, 12, 2, hour, 30, tzinfo=UTC)  # a Wednesday, and the days either side are working days
    zone = calling_zone(POLICY_ON, now)
    assert zone is not None
    for later in (now, now + timedelta(hours=2)):
        local = later.astimezone(ZoneInfo(zone))
        assert 9 <= local.hour < 20
        assert is_calling_day(policy=POLICY_ON, day=local.date())


def test_when_it_is_no_calling_day_anywhere_there_is_no_zone() -> None:
    assert calling_zone(POLICY_ON, datetime(2026, 12, 5, 12, tzinfo=UTC)) is None  # Saturday everywhere


def test_a_rate_is_compared_with_its_baseline_and_a_latency_is_not() -> None:
    assert Figure("rate", 50.0, "loans/s", baseline=200.0).ratio == 0.25
    assert Figure("latency", 0.3, "s", baseline=0.1).ratio is None
    assert Figure("given", 2.0, "ms", baseline=1.0, ratio=2.0).ratio == 2.0
