"""Pure calendar logic: when to notify, when to call, when to retry, when a callback expires.

Everything here is a pure function of the policy, where the party is reachable (time zone and
preferred window) and `now`, so it can be tested without I/O. Clock times are local to the party;
the instants handed in and returned are aware datetimes (the scheduler stores them in UTC).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache, lru_cache
from itertools import pairwise
from zoneinfo import ZoneInfo

import holidays

from shared.events import Party, Window
from shared.policy import Policy, minutes_of_day

DAY_MINUTES = 24 * 60
# How far ahead a slot is looked for: beyond any deadline the policy allows (120 business days).
HORIZON_DAYS = 400


@dataclass(frozen=True)
class Reach:
    """Where and when a party may be phoned: their IANA time zone and optional preferred window."""

    timezone: str
    window: Window | None = None

    @classmethod
    def of(cls, party: Party) -> Reach:
        return cls(timezone=party.timezone, window=party.preferred_window)


@dataclass(frozen=True)
class Plan:
    notice_at: datetime
    due_at: datetime
    deadline: datetime
    lead_honoured: bool


@dataclass(frozen=True)
class Span:
    """Minutes of a local day [start, end) that lie in one part of the day."""

    start: float
    end: float
    part: int


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@cache
def _calendar(code: str) -> holidays.HolidayBase:
    # The package knows weekends, public holidays and the weekend make-up working days (调休).
    return holidays.country_holidays(code)


def is_calling_day(*, policy: Policy, day: date) -> bool:
    """A business day of the policy's calendar; with no calendar (`holidays = ""`) every day is one."""
    return _calling(policy.calling_hours.holidays, day)


@lru_cache(maxsize=4096)
def _calling(code: str, day: date) -> bool:
    # Cached: every timer and every loan asks about the same few weeks of days.
    return True if not code else bool(_calendar(code).is_working_day(day))


def part_of_day(*, policy: Policy, minute: float) -> int:
    """Which part of the day (0 = morning, ...) a local minute of the day falls in."""
    return sum(1 for b in policy.attempts.day_parts if minute >= minutes_of_day(b))


def calling_spans(*, policy: Policy, window: Window | None) -> list[Span]:
    """Calling hours, narrowed to the preferred window when they overlap, cut at the parts of the day."""
    hours, parts = policy.calling_hours, tuple(policy.attempts.day_parts)
    return list(_spans(hours.start, hours.end, parts, window.start if window else None, window.end if window else None))


@cache
def _spans(
    start: str, end: str, parts: tuple[str, ...], window_start: str | None, window_end: str | None
) -> tuple[Span, ...]:
    # Cached: the timer loop asks for the same few clocks for every slot it offers.
    hours = [(minutes_of_day(start), minutes_of_day(end))]
    spans = hours
    if window_start is not None and window_end is not None:
        narrowed = _intersect(hours, _window_intervals(Window(start=window_start, end=window_end)))
        # A window entirely outside calling hours cannot be honoured; calling hours are the hard rule.
        spans = narrowed or hours
    cuts = sorted({minutes_of_day(b) for b in parts})
    out: list[Span] = []
    for a0, b0 in spans:
        edges = [a0, *(c for c in cuts if a0 < c < b0), b0]
        out += [Span(a, b, sum(1 for c in parts if a >= minutes_of_day(c))) for a, b in pairwise(edges)]
    return tuple(out)


def _window_intervals(window: Window) -> list[tuple[int, int]]:
    start, end = minutes_of_day(window.start), minutes_of_day(window.end)
    if start < end:
        return [(start, end)]
    if start == end:
        return [(0, DAY_MINUTES)]
    return [(0, end), (start, DAY_MINUTES)]  # wraps midnight, e.g. 22:00-01:00


def _intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = [(max(s1, s2), min(e1, e2)) for s1, e1 in a for s2, e2 in b]
    return sorted((s, e) for s, e in out if s < e)


@lru_cache(maxsize=8192)  # every slot search of the day asks for the same few clock times
def local_instant(*, day: date, minute: float, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local day's minute (24:00 is the next day's midnight)."""
    # Aware arithmetic in one zone is wall-clock arithmetic; astimezone then resolves DST.
    local = datetime.combine(day, time(0), tzinfo=zone) + timedelta(minutes=minute)
    return local.astimezone(UTC)


def _local_minute(at: datetime, zone: ZoneInfo) -> tuple[date, float]:
    local = at.astimezone(zone)
    return local.date(), local.hour * 60 + local.minute + local.second / 60 + local.microsecond / 60e6


def is_allowed(*, policy: Policy, reach: Reach, at: datetime, use_window: bool = True) -> bool:
    """Whether `at` is inside calling hours (and the window) on a calling day, in the party's zone."""
    day, minute = _local_minute(at, _zone(reach.timezone))
    spans = calling_spans(policy=policy, window=reach.window if use_window else None)
    return is_calling_day(policy=policy, day=day) and any(s.start <= minute < s.end for s in spans)


def _days(start: date, stop: date) -> Iterator[date]:
    day = start
    while day <= stop:
        yield day
        day += timedelta(days=1)


def earliest_slot(
    *,
    policy: Policy,
    reach: Reach,
    after: datetime,
    before: datetime,
    busy_days: frozenset[date] = frozenset(),
    avoid_part: int | None = None,
    use_window: bool = True,
) -> datetime | None:
    """The first instant at or after `after` and before `before` when the party may be phoned."""
    zone = _zone(reach.timezone)
    spans = [
        s for s in calling_spans(policy=policy, window=reach.window if use_window else None) if s.part != avoid_part
    ]
    last = min(before, after + timedelta(days=HORIZON_DAYS))
    for day in _days(after.astimezone(zone).date(), last.astimezone(zone).date()):
        if day in busy_days or not is_calling_day(policy=policy, day=day):
            continue
        for span in spans:
            lo = local_instant(day=day, minute=span.start, zone=zone)
            hi = local_instant(day=day, minute=span.end, zone=zone)
            slot = max(after, lo)
            # The round trip guards against wall times that a daylight-saving jump skips.
            on_day, minute = _local_minute(slot, zone)
            if slot < min(hi, before) and on_day == day and span.start <= minute < span.end:
                return slot
    return None


def business_day_end(*, policy: Policy, reach: Reach, now: datetime, days: int) -> datetime:
    """End of calling hours on the `days`-th business day after today (0: today, or the next business day)."""
    hours = policy.calling_hours
    today = now.astimezone(_zone(reach.timezone)).date()
    return _business_day_end(hours.holidays, hours.end, reach.timezone, today, days)


@lru_cache(maxsize=4096)
def _business_day_end(holidays_code: str, end: str, timezone: str, today: date, days: int) -> datetime:
    # Cached: it depends on the local date only, and each new callback asks three times.
    day, counted = today, 0
    while counted < days or not _calling(holidays_code, day):
        day += timedelta(days=1)
        counted += _calling(holidays_code, day)
    return local_instant(day=day, minute=minutes_of_day(end), zone=_zone(timezone))


def _quiet_period(*, policy: Policy, reach: Reach, at: datetime) -> tuple[datetime, datetime] | None:
    """The quiet period [began, ends) that holds `at`, or None when `at` is outside quiet hours."""
    quiet_start, quiet_end = minutes_of_day(policy.notice.quiet_start), minutes_of_day(policy.notice.quiet_end)
    if quiet_start == quiet_end:
        return None
    zone = _zone(reach.timezone)
    day, minute = _local_minute(at, zone)
    if quiet_start < quiet_end:
        if not quiet_start <= minute < quiet_end:
            return None
        began_day, end_day = day, day
    elif minute >= quiet_start:  # wraps midnight, e.g. 21:00-08:00
        began_day, end_day = day, day + timedelta(days=1)
    elif minute < quiet_end:
        began_day, end_day = day - timedelta(days=1), day
    else:
        return None
    began = local_instant(day=began_day, minute=quiet_start, zone=zone)
    return began, local_instant(day=end_day, minute=quiet_end, zone=zone)


def notice_time(*, policy: Policy, reach: Reach, at: datetime) -> datetime:
    """`at`, or the end of the quiet hours when `at` falls inside them (the notice waits for morning)."""
    # A loop, as daylight saving can skip the wall time quiet hours end at (03:00 is then quiet again), or
    # repeat the hour they end in (the end computed is then the first pass, already behind `at`).
    while (quiet := _quiet_period(policy=policy, reach=reach, at=at)) is not None:
        at = max(quiet[1], at + timedelta(minutes=1))
    return at


def _latest_notice(*, policy: Policy, reach: Reach, earliest: datetime, by: datetime) -> datetime:
    """The latest moment in [earliest, by] outside quiet hours; `earliest` must be outside them."""
    quiet = _quiet_period(policy=policy, reach=reach, at=by)
    if quiet is None:
        return by
    # Clock times have minute precision: the minute before quiet hours begin is the last one outside them.
    # Sending earlier keeps the whole lead; sending at the end of quiet hours would shorten it.
    before = max(earliest, min(by, quiet[0] - timedelta(minutes=1)))
    # A daylight-saving jump can move the quiet start; `earliest` is always a safe answer.
    return before if _quiet_period(policy=policy, reach=reach, at=before) is None else earliest


def _free_slot(
    *, policy: Policy, reach: Reach, after: datetime, deadline: datetime, busy_days: frozenset[date]
) -> datetime | None:
    """The earliest slot at or after `after` before the deadline, on a day the person is not fully booked if any."""
    found = earliest_slot(policy=policy, reach=reach, after=after, before=deadline, busy_days=busy_days)
    # The per-person daily cap gives way before the deadline does.
    return found or earliest_slot(policy=policy, reach=reach, after=after, before=deadline)


def _at_once(
    *, policy: Policy, reach: Reach, now: datetime, deadline: datetime, busy_days: frozenset[date]
) -> tuple[datetime, datetime]:
    """(notice, due) when the lead cannot be honoured within the first-call limit: notify at once, call soonest."""
    wake = notice_time(policy=policy, reach=reach, at=now)
    due = _free_slot(policy=policy, reach=reach, after=wake, deadline=deadline, busy_days=busy_days)
    if due is not None:
        return wake, due
    # Quiet hours cover every calling minute left before the deadline, so no notice outside them can precede
    # a call. The call must still happen, inside calling hours: the contract's "at once" wins over quiet hours.
    due = _free_slot(policy=policy, reach=reach, after=now, deadline=deadline, busy_days=busy_days)
    if due is not None:
        return now, due
    # No calling minute at all before the deadline (a daylight-saving jump ate it): still never a due time
    # outside calling hours; the first one after the deadline, whose timer fires first.
    later = earliest_slot(policy=policy, reach=reach, after=now, before=now + timedelta(days=HORIZON_DAYS))
    if later is None:
        raise ValueError("calling hours leave no slot within the planning horizon")
    return now, later


def plan_first_call(*, policy: Policy, party: Party, now: datetime, busy_days: frozenset[date] = frozenset()) -> Plan:
    """When to notify and when to first call a party (CONTRACT.md section 4), and when the callback expires."""
    reach = Reach.of(party)
    lead = policy.notice.lead
    deadline = business_day_end(policy=policy, reach=reach, now=now, days=policy.attempts.deadline_business_days)
    limit = min(
        deadline,
        business_day_end(policy=policy, reach=reach, now=now, days=policy.attempts.first_call_within_business_days),
    )
    # The first moment a notice may go out; a call a full lead after it honours the lead.
    wake = notice_time(policy=policy, reach=reach, at=now)
    due = earliest_slot(policy=policy, reach=reach, after=wake + lead, before=limit, busy_days=busy_days)
    if due is not None:
        notice = _latest_notice(policy=policy, reach=reach, earliest=wake, by=due - lead)
    else:
        notice, due = _at_once(policy=policy, reach=reach, now=now, deadline=deadline, busy_days=busy_days)
    # Measured, not assumed: a call pushed past the limit by busy days may still get the whole lead.
    return Plan(notice_at=notice, due_at=due, deadline=deadline, lead_honoured=due - notice >= lead)


def plan_retry(
    *,
    policy: Policy,
    reach: Reach,
    last_call_at: datetime,
    now: datetime,
    deadline: datetime,
    busy_days: frozenset[date] = frozenset(),
) -> datetime | None:
    """Next try after no_answer/busy: `min_gap` later, in another part of the day when possible; None if none fits."""
    after = max(now, last_call_at + policy.attempts.min_gap)
    _, minute = _local_minute(last_call_at, _zone(reach.timezone))
    part = part_of_day(policy=policy, minute=minute)
    found = earliest_slot(
        policy=policy, reach=reach, after=after, before=deadline, busy_days=busy_days, avoid_part=part
    )
    # A preferred window inside one part of the day leaves no other part: the party's wish wins.
    return found or earliest_slot(policy=policy, reach=reach, after=after, before=deadline, busy_days=busy_days)


def plan_reschedule(
    *, policy: Policy, reach: Reach, requested: datetime, now: datetime, deadline: datetime
) -> datetime | None:
    """The party's requested time clamped into calling hours; past the deadline, the last calling day's start."""
    after = max(requested, now)
    found = earliest_slot(policy=policy, reach=reach, after=after, before=deadline, use_window=False)
    return found or latest_start(policy=policy, reach=reach, now=now, deadline=deadline)


def latest_start(*, policy: Policy, reach: Reach, now: datetime, deadline: datetime) -> datetime | None:
    """The start of the last stretch of calling hours before the deadline (or now, if inside it)."""
    zone = _zone(reach.timezone)
    start, end = minutes_of_day(policy.calling_hours.start), minutes_of_day(policy.calling_hours.end)
    day = deadline.astimezone(zone).date()
    first = now.astimezone(zone).date()
    while day >= first:
        if is_calling_day(policy=policy, day=day):
            slot = max(now, local_instant(day=day, minute=start, zone=zone))
            if slot < min(deadline, local_instant(day=day, minute=end, zone=zone)):
                return slot
        day -= timedelta(days=1)
    return None


def local_day(*, at: datetime, timezone: str) -> date:
    """The party's local date of an instant (per-person daily caps count by it)."""
    return at.astimezone(_zone(timezone)).date()


def offer_slots(
    *, policy: Policy, reach: Reach, after: datetime, deadline: datetime, busy_days: frozenset[date], count: int
) -> list[datetime]:
    """Up to `count` times a party may pick on their page: starts of the parts of calling days, never a busy day."""
    zone = _zone(reach.timezone)
    out: list[datetime] = []
    if count <= 0:
        return out
    hours = policy.calling_hours
    parts = tuple(policy.attempts.day_parts)
    for day in _days(after.astimezone(zone).date(), deadline.astimezone(zone).date()):
        if day in busy_days or not is_calling_day(policy=policy, day=day):
            continue
        for slot in _day_starts(reach.timezone, day, hours.start, hours.end, parts, hours.holidays):
            if after <= slot < deadline:
                out.append(slot)
                if len(out) >= count:
                    return out
    return out


@lru_cache(maxsize=4096)
def _day_starts(
    timezone: str, day: date, start: str, end: str, parts: tuple[str, ...], holidays_code: str
) -> tuple[datetime, ...]:
    """The starts of a calling day's parts as instants (cached: every page link of the day offers them)."""
    zone = _zone(timezone)
    spans = _spans(start, end, parts, None, None)
    out = []
    for span in spans:
        slot = local_instant(day=day, minute=span.start, zone=zone)
        # The round trip guards against wall times a daylight-saving jump skips (the party picks:
        # their preferred window does not narrow it).
        local, minute = _local_minute(slot, zone)
        calling = not holidays_code or bool(_calendar(holidays_code).is_working_day(local))
        if calling and any(s.start <= minute < s.end for s in spans):
            out.append(slot)
    return tuple(out)
