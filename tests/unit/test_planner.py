"""Slot planning with concrete dates: calling hours, China's holidays and make-up days, windows, lead, quiet hours."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from services.scheduler import planner
from services.scheduler.planner import Reach
from shared.events import Party, Window
from shared.policy import Policy

SH = ZoneInfo("Asia/Shanghai")
NY = ZoneInfo("America/New_York")
DEFAULT = Policy()


def at(y: int, mo: int, d: int, h: int = 0, mi: int = 0, zone: ZoneInfo = SH) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=zone)


def party(*, timezone: str = "Asia/Shanghai", window: tuple[str, str] | None = None) -> Party:
    return Party(
        party_id="P-1",
        role="borrower",
        name="张伟",
        phone="+8613800138000",
        timezone=timezone,
        preferred_window=Window(start=window[0], end=window[1]) if window else None,
    )


def policy(**sections: dict[str, object]) -> Policy:
    return Policy.model_validate(sections)


def test_friday_evening_before_a_monday_holiday_waits_for_tuesday() -> None:
    # 2026-04-04..06 is Qingming (Sat-Mon): the first business day after Friday is Tuesday 7 April.
    plan = planner.plan_first_call(policy=DEFAULT, party=party(), now=at(2026, 4, 3, 19, 50))
    assert plan.due_at == at(2026, 4, 7, 9, 0)
    assert plan.notice_at == at(2026, 4, 6, 9, 0)  # 24 h before, outside quiet hours
    assert plan.lead_honoured
    # Five business days after Friday: 7, 8, 9, 10 and 13 April; expiry at the end of calling hours.
    assert plan.deadline == at(2026, 4, 13, 20, 0)


def test_a_saturday_make_up_working_day_is_a_calling_day() -> None:
    # 2026-02-14 is a Saturday worked in exchange for the Spring Festival (调休).
    plan = planner.plan_first_call(policy=DEFAULT, party=party(), now=at(2026, 2, 13, 10, 0))
    assert plan.due_at == at(2026, 2, 14, 10, 0)
    assert plan.notice_at == at(2026, 2, 13, 10, 0)


def test_an_ordinary_saturday_is_not_a_calling_day() -> None:
    plan = planner.plan_first_call(policy=DEFAULT, party=party(), now=at(2026, 3, 6, 10, 0))  # Friday
    assert plan.due_at == at(2026, 3, 9, 9, 0)  # Monday morning


def test_spring_festival_pushes_the_deadline_past_the_holiday() -> None:
    plan = planner.plan_first_call(policy=DEFAULT, party=party(), now=at(2026, 2, 14, 10, 0))
    # Feb 15-23 are off; business days after Saturday 14 Feb: 24, 25, 26, 27 and Saturday 28 (make-up).
    assert plan.deadline == at(2026, 2, 28, 20, 0)
    assert plan.due_at == at(2026, 2, 24, 9, 0)


def test_no_calendar_means_every_day_is_a_business_day() -> None:
    no_holidays = policy(calling_hours={"holidays": ""})
    plan = planner.plan_first_call(policy=no_holidays, party=party(), now=at(2026, 4, 3, 19, 50))
    assert plan.due_at == at(2026, 4, 4, 19, 50)


def test_preferred_window_is_honoured() -> None:
    plan = planner.plan_first_call(policy=DEFAULT, party=party(window=("18:00", "20:30")), now=at(2026, 3, 9, 10))
    assert plan.due_at == at(2026, 3, 10, 18, 0)  # window start, not 10:00; and 20:30 is past calling hours


def test_window_outside_calling_hours_falls_back_to_calling_hours() -> None:
    plan = planner.plan_first_call(policy=DEFAULT, party=party(window=("21:00", "23:00")), now=at(2026, 3, 9, 10))
    assert plan.due_at == at(2026, 3, 10, 10, 0)


def test_party_time_zone_is_used() -> None:
    now = datetime(2026, 3, 9, 10, 0, tzinfo=NY)
    plan = planner.plan_first_call(policy=DEFAULT, party=party(timezone="America/New_York"), now=now)
    assert plan.due_at == datetime(2026, 3, 10, 10, 0, tzinfo=NY)
    assert plan.due_at.astimezone(SH).hour == 22  # 22:00 in Shanghai, yet 10:00 for the party


def test_notice_that_would_fall_in_quiet_hours_goes_before_them_keeping_the_lead() -> None:
    short_lead = policy(notice={"lead": "PT12H"})
    plan = planner.plan_first_call(policy=short_lead, party=party(), now=at(2026, 3, 9, 20, 30))
    # Due Tuesday 09:00; 12 h before is Monday 21:00, in quiet hours: the notice goes in the minute before.
    assert plan.due_at == at(2026, 3, 10, 9, 0)
    assert plan.notice_at == at(2026, 3, 9, 20, 59)
    assert plan.lead_honoured


def test_notice_held_by_quiet_hours_moves_the_call_to_keep_the_lead() -> None:
    short_lead = policy(notice={"lead": "PT12H"}, attempts={"first_call_within_business_days": 2})
    plan = planner.plan_first_call(policy=short_lead, party=party(), now=at(2026, 3, 9, 22, 0))
    # No notice before Tuesday 08:00, so no call before 20:00 (past calling hours): Wednesday 09:00,
    # noticed in the minute before Tuesday's quiet hours.
    assert plan.due_at == at(2026, 3, 11, 9, 0)
    assert plan.notice_at == at(2026, 3, 10, 20, 59)
    assert plan.lead_honoured


def test_lead_shortened_by_quiet_hours_is_reported() -> None:
    short_lead = policy(notice={"lead": "PT12H"})
    plan = planner.plan_first_call(policy=short_lead, party=party(), now=at(2026, 3, 9, 22, 0))
    # Within the limit (Tuesday 20:00) no call is 12 h after 08:00: notice at 08:00, call at 09:00.
    assert (plan.notice_at, plan.due_at) == (at(2026, 3, 10, 8, 0), at(2026, 3, 10, 9, 0))
    assert not plan.lead_honoured


def test_quiet_hours_over_every_calling_minute_still_call_in_calling_hours() -> None:
    all_quiet = policy(notice={"quiet_start": "21:00", "quiet_end": "20:45"}, attempts={"deadline_business_days": 1})
    plan = planner.plan_first_call(policy=all_quiet, party=party(), now=at(2026, 3, 9, 21, 30))
    # Quiet until Tuesday 20:45, past the deadline (Tuesday 20:00): the notice goes at once, the call at 09:00.
    assert (plan.notice_at, plan.due_at) == (at(2026, 3, 9, 21, 30), at(2026, 3, 10, 9, 0))
    assert plan.deadline == at(2026, 3, 10, 20, 0)
    assert not plan.lead_honoured


def test_quiet_hours_over_every_calling_minute_notice_before_them_when_possible() -> None:
    all_quiet = policy(notice={"quiet_start": "08:00", "quiet_end": "21:00"})
    plan = planner.plan_first_call(policy=all_quiet, party=party(), now=at(2026, 3, 9, 7, 0))
    # Due Tuesday 09:00; 24 h before is in Monday's quiet hours: the notice goes in the minute before them.
    assert (plan.notice_at, plan.due_at) == (at(2026, 3, 9, 7, 59), at(2026, 3, 10, 9, 0))
    assert plan.lead_honoured


def test_lead_that_cannot_be_honoured_sends_the_notice_at_once_and_calls_at_the_earliest_slot() -> None:
    same_day = policy(attempts={"first_call_within_business_days": 0})
    plan = planner.plan_first_call(policy=same_day, party=party(), now=at(2026, 3, 9, 10, 0))
    assert not plan.lead_honoured
    assert plan.notice_at == at(2026, 3, 9, 10, 0)
    assert plan.due_at == at(2026, 3, 9, 10, 0)


def test_lead_not_honoured_at_night_notifies_in_the_morning_and_calls_after() -> None:
    same_day = policy(attempts={"first_call_within_business_days": 0})
    plan = planner.plan_first_call(policy=same_day, party=party(), now=at(2026, 3, 9, 22, 0))
    assert plan.notice_at == at(2026, 3, 10, 8, 0)
    assert plan.due_at == at(2026, 3, 10, 9, 0)


def test_quiet_period_off_when_start_equals_end() -> None:
    never_quiet = policy(notice={"quiet_start": "22:00", "quiet_end": "22:00"})
    moment = at(2026, 3, 9, 23, 0)
    assert planner.notice_time(policy=never_quiet, reach=Reach("Asia/Shanghai"), at=moment) == moment


def test_calls_at_any_hour_with_00_to_24() -> None:
    always = policy(
        calling_hours={"start": "00:00", "end": "24:00"},
        notice={"lead": "PT1H", "quiet_start": "00:00", "quiet_end": "00:00"},
    )
    plan = planner.plan_first_call(policy=always, party=party(), now=at(2026, 3, 9, 23, 30))
    assert plan.due_at == at(2026, 3, 10, 0, 30)


def test_busy_days_of_the_person_are_skipped() -> None:
    busy = frozenset({date(2026, 3, 9), date(2026, 3, 10)})
    plan = planner.plan_first_call(policy=DEFAULT, party=party(), now=at(2026, 3, 9, 10), busy_days=busy)
    # No free day within the first-call limit: the notice goes at once, the call on the first free day.
    assert (plan.notice_at, plan.due_at) == (at(2026, 3, 9, 10), at(2026, 3, 11, 9, 0))
    assert plan.lead_honoured  # not promised within the limit, yet 47 h of notice is given


def test_notice_waits_for_quiet_hours_ending_in_a_daylight_saving_gap() -> None:
    # Sydney skips 02:00-03:00 on 4 October 2026; quiet hours end at 02:00 and begin again at 03:00.
    night = policy(notice={"quiet_start": "03:00", "quiet_end": "02:00"})
    sydney = ZoneInfo("Australia/Sydney")
    wake = planner.notice_time(policy=night, reach=Reach("Australia/Sydney"), at=at(2026, 10, 3, 21, zone=sydney))
    assert wake == at(2026, 10, 5, 2, 0, zone=sydney)


def test_retry_is_min_gap_later_and_in_another_part_of_the_day() -> None:
    reach = Reach("Asia/Shanghai")
    deadline = at(2026, 3, 16, 20)
    morning = planner.plan_retry(
        policy=DEFAULT, reach=reach, last_call_at=at(2026, 3, 9, 9, 0), now=at(2026, 3, 9, 9, 1), deadline=deadline
    )
    assert morning == at(2026, 3, 9, 13, 0)  # 4 h later is the afternoon
    late_morning = planner.plan_retry(
        policy=policy(attempts={"min_gap": "PT1H"}),
        reach=reach,
        last_call_at=at(2026, 3, 9, 9, 0),
        now=at(2026, 3, 9, 9, 1),
        deadline=deadline,
    )
    assert late_morning == at(2026, 3, 9, 12, 0)  # 10:00 is still morning: wait for the afternoon
    evening = planner.plan_retry(
        policy=DEFAULT, reach=reach, last_call_at=at(2026, 3, 9, 19, 0), now=at(2026, 3, 9, 19, 0), deadline=deadline
    )
    assert evening == at(2026, 3, 10, 9, 0)  # next morning, not the next evening


def test_retry_within_a_narrow_window_keeps_the_window() -> None:
    reach = Reach("Asia/Shanghai", Window(start="18:00", end="20:00"))
    retry = planner.plan_retry(
        policy=DEFAULT,
        reach=reach,
        last_call_at=at(2026, 3, 9, 18, 0),
        now=at(2026, 3, 9, 18, 0),
        deadline=at(2026, 3, 16, 20),
    )
    assert retry == at(2026, 3, 10, 18, 0)


def test_retry_that_does_not_fit_before_the_deadline_is_none() -> None:
    retry = planner.plan_retry(
        policy=DEFAULT,
        reach=Reach("Asia/Shanghai"),
        last_call_at=at(2026, 3, 9, 17, 0),
        now=at(2026, 3, 9, 17, 0),
        deadline=at(2026, 3, 9, 20, 0),
    )
    assert retry is None


def test_retry_skips_a_busy_day() -> None:
    retry = planner.plan_retry(
        policy=DEFAULT,
        reach=Reach("Asia/Shanghai"),
        last_call_at=at(2026, 3, 9, 9, 0),
        now=at(2026, 3, 9, 9, 0),
        deadline=at(2026, 3, 16, 20),
        busy_days=frozenset({date(2026, 3, 9)}),
    )
    assert retry == at(2026, 3, 10, 12, 0)  # next day, still another part of the day than 09:00


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        (at(2026, 3, 10, 15, 30), at(2026, 3, 10, 15, 30)),  # inside calling hours: as asked
        (at(2026, 3, 10, 21, 0), at(2026, 3, 11, 9, 0)),  # after hours: next morning
        (at(2026, 3, 14, 10, 0), at(2026, 3, 16, 9, 0)),  # a Saturday: Monday
        (at(2026, 3, 30, 10, 0), at(2026, 3, 16, 9, 0)),  # past the deadline: the last calling day
    ],
)
def test_reschedule_clamps_the_requested_time(requested: datetime, expected: datetime) -> None:
    moved = planner.plan_reschedule(
        policy=DEFAULT,
        reach=Reach("Asia/Shanghai", Window(start="18:00", end="19:00")),
        requested=requested,
        now=at(2026, 3, 9, 12),
        deadline=at(2026, 3, 16, 20),
    )
    assert moved == expected


def test_daylight_saving_spring_forward_in_new_york() -> None:
    # 2026-03-08 02:00 EST jumps to 03:00 EDT: a 02:00-03:00 window does not exist that day.
    early = policy(calling_hours={"start": "02:00", "end": "04:00", "holidays": ""}, notice={"lead": "PT0S"})
    reach = Reach("America/New_York", Window(start="02:00", end="03:00"))
    slot = planner.earliest_slot(
        policy=early,
        reach=reach,
        after=datetime(2026, 3, 8, 0, 0, tzinfo=NY),
        before=datetime(2026, 3, 12, 0, 0, tzinfo=NY),
    )
    assert slot == datetime(2026, 3, 9, 2, 0, tzinfo=NY)


def test_part_of_day_boundaries() -> None:
    assert [planner.part_of_day(policy=DEFAULT, minute=m) for m in (0, 719, 720, 1079, 1080)] == [0, 0, 1, 1, 2]
    one_part = policy(attempts={"day_parts": []})
    assert planner.part_of_day(policy=one_part, minute=1200) == 0


def test_day_parts_must_increase() -> None:
    with pytest.raises(ValueError, match="day_parts"):
        policy(attempts={"day_parts": ["18:00", "12:00"]})


def test_deadline_is_end_of_calling_hours() -> None:
    assert planner.business_day_end(policy=DEFAULT, reach=Reach("Asia/Shanghai"), now=at(2026, 3, 9, 10), days=0) == at(
        2026, 3, 9, 20
    )
    assert planner.business_day_end(
        policy=DEFAULT, reach=Reach("Asia/Shanghai"), now=at(2026, 3, 14, 10), days=0
    ) == at(2026, 3, 16, 20)  # Saturday: the next business day
