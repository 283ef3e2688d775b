"""The dashboard's page without a database: the demo banner, and the experiments panel's error bars."""

from __future__ import annotations

from datetime import timedelta

from services.outcomes.dashboard.board import Board, ExperimentPanel, verdict
from services.outcomes.dashboard.session import Session
from services.outcomes.dashboard.views import REPORTING_TZ, templates
from services.outcomes.stats import Group, Period, RefusalStats, counts
from shared.db import utcnow


def arm(name: str, *, refused: int, completed: int, p: float | None) -> Group:
    found = counts(closed=refused + completed, completed=completed, refused=refused)
    return Group(key=name, p_value=p, **found.model_dump())


def page(*, demo: bool) -> str:
    now = utcnow()
    start = now - timedelta(hours=24)
    empty = counts(closed=0, completed=0, refused=0)
    period = Period(from_=start, to=now, totals=empty, groups=[])
    stats = RefusalStats(
        group_by="reason", timezone=REPORTING_TZ, branch_id=None, from_=start, to=now, totals=empty, groups=[],
        compare=None, change=None,
    )  # fmt: skip
    control = arm("control", refused=71, completed=205, p=1.0)
    with_code = arm("with_code", refused=47, completed=224, p=0.017)
    said = [verdict(arm=with_code, first=control)]
    panel = ExperimentPanel(name="caller_code", arms=[control, with_code], verdicts=said)
    board = Board(
        window="24h", start=start, end=now, stats=stats, trend=period, branches=period, agents=period,
        open_by_state={}, overdue_count=0, overdue=[], escalations=[], escalation_count=0, level2_count=0,
        experiments=(panel,),
    )  # fmt: skip
    context = {
        "board": board, "charts": board.charts(REPORTING_TZ), "windows": ["24h"], "now": now, "tz": REPORTING_TZ,
        "who": Session(role="supervisor", key_id="k", session_id="s", expires=0), "refresh_s": 15, "demo": demo,
    }  # fmt: skip
    return templates.env.get_template("dashboard.html").render(context)


def test_the_demo_banner_says_the_data_and_the_effect_are_simulated_only_in_a_demo() -> None:
    shown, hidden = page(demo=True), page(demo=False)
    assert 'id="demo-banner"' in shown and "simulated" in shown and "模拟" in shown
    assert 'id="demo-banner"' not in hidden


def test_each_arm_is_drawn_with_its_n_its_interval_and_the_verdict() -> None:
    html = page(demo=False).split('id="experiments"', 1)[1]
    assert "control (n=276)" in html and "with_code (n=271)" in html
    assert html.count('class="errorbar"') == 2 and "25.7% [20.9–31.2]" in html and "17.3% [13.3–22.3]" in html
    assert "with_code refuses less (p = 0.017)" in html and "with_code 拒绝更少（p = 0.017）" in html
