"""Properties of slot planning over random policies, parties, zones (DST ones too) and moments.

`make test` runs a fixed, derandomized set of examples; `make test-props` runs many random ones
(HUIFANG_HYPOTHESIS_PROFILE=props).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.scheduler import planner
from services.scheduler.planner import Reach
from shared.events import Party, Window
from shared.policy import Policy, minutes_of_day

settings.register_profile("ci", max_examples=200, derandomize=True, deadline=None, database=None)
settings.register_profile("props", max_examples=5000, deadline=None, database=None)
PROFILE = settings.get_profile(os.environ.get("HUIFANG_HYPOTHESIS_PROFILE", "ci"))

ZONES = ["Asia/Shanghai", "America/New_York", "Europe/London", "Australia/Sydney", "Asia/Kolkata"]
DAY = 24 * 60
clock = st.integers(min_value=0, max_value=24 * 4).map(lambda q: f"{q * 15 // 60:02d}:{q * 15 % 60:02d}")
moments = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC))


def hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


@st.composite
def quiet_over(draw: st.DrawFn, start: int, end: int) -> list[str]:
    """Quiet hours that cover every calling minute [start, end): the case the planner used to get wrong."""
    length = 15 * draw(st.integers((end - start) // 15, DAY // 15 - 1))
    quiet_start = (start - 15 * draw(st.integers(0, (length - (end - start)) // 15))) % DAY
    return [hhmm(quiet_start), hhmm((quiet_start + length) % DAY)]


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    start, end = sorted(draw(st.lists(clock, min_size=2, max_size=2, unique=True)))
    any_quiet = st.lists(clock.filter(lambda c: c != "24:00"), min_size=2, max_size=2)
    quiet = draw(st.one_of(any_quiet, quiet_over(minutes_of_day(start), minutes_of_day(end))))
    raw = {
        "calling_hours": {"start": start, "end": end, "holidays": draw(st.sampled_from(["CN", ""]))},
        "notice": {
            "lead": timedelta(minutes=draw(st.integers(0, 3 * 24 * 60))),
            "quiet_start": quiet[0],
            "quiet_end": quiet[1],
        },
        "attempts": {
            "first_call_within_business_days": draw(st.integers(0, 3)),
            "deadline_business_days": draw(st.integers(1, 10)),
            "min_gap": timedelta(minutes=draw(st.integers(0, 12 * 60))),
        },
    }
    return Policy.model_validate(raw)


@st.composite
def parties(draw: st.DrawFn) -> Party:
    window = None
    if draw(st.booleans()):
        a, b = draw(st.lists(clock.filter(lambda c: c != "24:00"), min_size=2, max_size=2, unique=True))
        window = Window(start=a, end=b)
    return Party(
        party_id="P-1",
        role="borrower",
        name="张伟",
        phone="+8613800138000",
        timezone=draw(st.sampled_from(ZONES)),
        preferred_window=window,
    )


def allowed(policy: Policy, party: Party, moment: datetime, *, use_window: bool = False) -> bool:
    return planner.is_allowed(policy=policy, reach=Reach.of(party), at=moment, use_window=use_window)


def party_in(timezone: str) -> Party:
    return Party(party_id="P-1", role="borrower", name="张伟", phone="+8613800138000", timezone=timezone)


SHANGHAI = party_in("Asia/Shanghai")
# Every calling minute (09:00-20:00) is quiet and the deadline is tomorrow evening: no notice outside quiet
# hours can precede any call (the old planner returned a due time of 20:45, outside calling hours).
ALL_QUIET = Policy.model_validate(
    {"notice": {"quiet_start": "21:00", "quiet_end": "20:45"}, "attempts": {"deadline_business_days": 1}}
)
# 12 h before the first slot (Tuesday 09:00) is 21:00, quiet (the old planner sent the notice at 08:00, 1 h
# before the call, and reported the lead as honoured).
SHORT_LEAD = Policy.model_validate({"notice": {"lead": "PT12H"}, "attempts": {"first_call_within_business_days": 2}})
MONDAY_2030 = datetime(2026, 3, 9, 12, 30, tzinfo=UTC)  # 20:30 in Shanghai
MONDAY_2200 = datetime(2026, 3, 9, 14, 0, tzinfo=UTC)  # 22:00 in Shanghai, quiet


def first_call_examples(test: Callable[..., None]) -> Callable[..., None]:
    """The regressions, run whatever the profile draws."""
    test = example(policy=ALL_QUIET, party=SHANGHAI, now=MONDAY_2030 + timedelta(hours=1))(test)
    test = example(policy=SHORT_LEAD, party=SHANGHAI, now=MONDAY_2030)(test)
    return example(policy=SHORT_LEAD, party=SHANGHAI, now=MONDAY_2200)(test)


def quiet(policy: Policy, party: Party, moment: datetime) -> bool:
    return planner.notice_time(policy=policy, reach=Reach.of(party), at=moment) != moment


@PROFILE
@given(policy=policies(), party=parties(), now=moments)
@first_call_examples
def test_first_call_is_in_calling_hours_on_a_business_day_before_the_deadline(
    policy: Policy, party: Party, now: datetime
) -> None:
    plan = planner.plan_first_call(policy=policy, party=party, now=now)
    assert allowed(policy, party, plan.due_at), "outside calling hours"
    assert planner.is_calling_day(policy=policy, day=planner.local_day(at=plan.due_at, timezone=party.timezone))
    assert now <= plan.notice_at <= plan.due_at
    # Only when daylight saving swallows every calling minute before the deadline may the call come after it.
    reach = Reach.of(party)
    any_slot = planner.earliest_slot(policy=policy, reach=reach, after=now, before=plan.deadline, use_window=False)
    assert plan.due_at < plan.deadline or any_slot is None


@PROFILE
@given(policy=policies(), party=parties(), now=moments)
@first_call_examples
def test_notice_is_outside_quiet_hours_and_the_lead_is_reported_truthfully(
    policy: Policy, party: Party, now: datetime
) -> None:
    plan = planner.plan_first_call(policy=policy, party=party, now=now)
    assert plan.notice_at <= plan.due_at
    assert plan.lead_honoured == (plan.due_at - plan.notice_at >= policy.notice.lead)
    if quiet(policy, party, plan.notice_at):
        # Chosen reading of CONTRACT.md section 4: quiet hours bind the notice, also when it goes "at once".
        # Only when quiet hours last until after every call the deadline allows does "at once" mean now,
        # in quiet hours: a call outside calling hours, or none, would break harder rules.
        assert plan.notice_at == now
        assert planner.notice_time(policy=policy, reach=Reach.of(party), at=now) > plan.due_at


@PROFILE
@given(policy=policies(), party=parties(), now=moments)
@first_call_examples
def test_lead_is_honoured_whenever_a_slot_allows_it(policy: Policy, party: Party, now: datetime) -> None:
    plan = planner.plan_first_call(policy=policy, party=party, now=now)
    reach = Reach.of(party)
    limit = min(
        plan.deadline,
        planner.business_day_end(
            policy=policy, reach=reach, now=now, days=policy.attempts.first_call_within_business_days
        ),
    )
    # A notice can go out no sooner than the end of the quiet hours `now` is in; a full lead after that.
    first_notice = planner.notice_time(policy=policy, reach=reach, at=now)
    possible = planner.earliest_slot(policy=policy, reach=reach, after=first_notice + policy.notice.lead, before=limit)
    if possible is not None:
        assert plan.lead_honoured and plan.due_at == possible


@PROFILE
@given(policy=policies(), party=parties(), now=moments, gap_calls=st.integers(0, 600))
def test_retry_is_late_enough_decent_and_before_the_deadline(
    policy: Policy, party: Party, now: datetime, gap_calls: int
) -> None:
    plan = planner.plan_first_call(policy=policy, party=party, now=now)
    called = plan.due_at + timedelta(minutes=gap_calls)
    retry = planner.plan_retry(
        policy=policy, reach=Reach.of(party), last_call_at=called, now=called, deadline=plan.deadline
    )
    if retry is not None:
        assert retry >= called + policy.attempts.min_gap
        assert retry < plan.deadline
        assert allowed(policy, party, retry)


@PROFILE
@given(policy=policies(), party=parties(), now=moments, ahead=st.integers(0, 30 * 24 * 60))
def test_reschedule_lands_in_calling_hours_before_the_deadline(
    policy: Policy, party: Party, now: datetime, ahead: int
) -> None:
    plan = planner.plan_first_call(policy=policy, party=party, now=now)
    moved = planner.plan_reschedule(
        policy=policy, reach=Reach.of(party), requested=now + timedelta(minutes=ahead), now=now, deadline=plan.deadline
    )
    assert moved is not None
    assert now <= moved < plan.deadline
    assert allowed(policy, party, moved)


@PROFILE
@given(policy=policies(), party=parties(), now=moments, busy=st.sets(st.integers(0, 6), max_size=4))
def test_busy_days_are_never_used_when_a_free_day_exists(
    policy: Policy, party: Party, now: datetime, busy: set[int]
) -> None:
    today = planner.local_day(at=now, timezone=party.timezone)
    busy_days = frozenset(today + timedelta(days=d) for d in busy)
    plan = planner.plan_first_call(policy=policy, party=party, now=now, busy_days=busy_days)
    free = planner.earliest_slot(
        policy=policy, reach=Reach.of(party), after=plan.notice_at, before=plan.deadline, busy_days=busy_days
    )
    if free is not None:
        assert planner.local_day(at=plan.due_at, timezone=party.timezone) not in busy_days


def test_china_calendar_knows_make_up_days() -> None:
    cn = Policy()
    assert planner.is_calling_day(policy=cn, day=date(2026, 2, 14))  # Saturday, 调休 working day
    assert not planner.is_calling_day(policy=cn, day=date(2026, 2, 17))  # Spring Festival
    assert not planner.is_calling_day(policy=cn, day=date(2026, 3, 14))  # ordinary Saturday


@PROFILE
@given(
    policy=policies(),
    party=parties(),
    now=moments,
    busy=st.sets(st.integers(0, 9), max_size=4),
    count=st.integers(0, 8),
)
def test_offered_slots_are_callable_before_the_deadline_and_never_on_a_busy_day(
    policy: Policy, party: Party, now: datetime, busy: set[int], count: int
) -> None:
    plan = planner.plan_first_call(policy=policy, party=party, now=now)
    today = planner.local_day(at=now, timezone=party.timezone)
    busy_days = frozenset(today + timedelta(days=d) for d in busy)
    slots = planner.offer_slots(
        policy=policy, reach=Reach.of(party), after=now, deadline=plan.deadline, busy_days=busy_days, count=count
    )
    assert len(slots) <= count and slots == sorted(set(slots))
    for slot in slots:
        assert now <= slot < plan.deadline
        assert allowed(policy, party, slot)  # calling hours on a calling day; the preferred window does not bind
        assert planner.local_day(at=slot, timezone=party.timezone) not in busy_days


def test_offered_slots_start_each_part_of_a_free_calling_day() -> None:
    monday = datetime(2026, 3, 9, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai
    busy = frozenset({date(2026, 3, 10)})
    slots = planner.offer_slots(
        policy=Policy(), reach=Reach(timezone="Asia/Shanghai"), after=monday + timedelta(hours=1),
        deadline=monday + timedelta(days=7), busy_days=busy, count=6,
    )  # fmt: skip
    local = [s.astimezone(planner._zone("Asia/Shanghai")).strftime("%a %H:%M") for s in slots]
    # Monday 09:00 is too soon; Tuesday is busy; the weekend is not a calling day.
    assert local == ["Mon 12:00", "Mon 18:00", "Wed 09:00", "Wed 12:00", "Wed 18:00", "Thu 09:00"]
