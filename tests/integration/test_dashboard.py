"""The dashboard over HTTP: login, session cookie, logout, and what the page shows."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import httpx
import pytest

from services.outcomes.dashboard.board import experiment_panels, rates
from services.outcomes.models import CallbackArm, CallbackView, EscalationView
from services.outcomes.stats import period
from shared.db import utcnow
from shared.policy import Policy
from tests.outcomes_support import closed_view, new_id, outcomes_db, seed
from tests.support import KEYS, Huifang


def browser(huifang: Huifang) -> httpx.AsyncClient:
    """A client without a bearer key, keeping cookies like a browser."""
    return httpx.AsyncClient(base_url=huifang.url("outcomes"), timeout=10)


async def log_in(client: httpx.AsyncClient, role: str = "supervisor") -> None:
    response = await client.post("/dashboard/login", data={"key": KEYS[role]})
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"


async def test_the_dashboard_is_behind_a_login_form(huifang: Huifang) -> None:
    async with browser(huifang) as client:
        page = await client.get("/dashboard")
        form = await client.get("/dashboard/login")
    assert page.status_code == 303 and page.headers["location"] == "/dashboard/login?next=%2Fdashboard"
    assert form.status_code == 200 and 'name="key"' in form.text
    assert "default-src 'self'" in form.headers["content-security-policy"]


async def test_wrong_and_agent_keys_are_refused(huifang: Huifang) -> None:
    async with browser(huifang) as client:
        unknown = await client.post("/dashboard/login", data={"key": "guess"})
        agent = await client.post("/dashboard/login", data={"key": KEYS["agent"]})
        still_out = await client.get("/dashboard")
    assert unknown.status_code == 401 and "Unknown key" in unknown.text and "set-cookie" not in unknown.headers
    assert agent.status_code == 403 and "supervisor" in agent.text and "set-cookie" not in agent.headers
    assert still_out.status_code == 303


async def test_a_supervisor_gets_a_strict_http_only_session_and_can_log_out(huifang: Huifang) -> None:
    async with browser(huifang) as client:
        login = await client.post("/dashboard/login", data={"key": KEYS["supervisor"]})
        cookie = login.headers["set-cookie"]
        page = await client.get("/dashboard")
        logout = await client.post("/dashboard/logout")
        after = await client.get("/dashboard")
    assert login.status_code == 303
    assert (
        "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/dashboard" in cookie
    )
    assert KEYS["supervisor"] not in cookie
    assert page.status_code == 200 and "Refusal rate" in page.text and KEYS["supervisor"] not in page.text
    assert logout.status_code == 303 and logout.headers["location"] == "/dashboard/login"
    assert after.status_code == 303


async def test_login_returns_to_the_page_asked_for_and_nowhere_else(huifang: Huifang) -> None:
    async with browser(huifang) as client:
        asked = await client.get("/dashboard", params={"window": "1h"})
        form = await client.get(asked.headers["location"])
        back = await client.post("/dashboard/login", data={"key": KEYS["supervisor"], "next": "/dashboard?window=1h"})
        away = await client.post("/dashboard/login", data={"key": KEYS["supervisor"], "next": "//evil.example/x"})
    assert 'value="/dashboard?window=1h"' in form.text
    assert back.headers["location"] == "/dashboard?window=1h"
    assert away.headers["location"] == "/dashboard"


async def test_a_tampered_cookie_is_no_session(huifang: Huifang) -> None:
    async with browser(huifang) as client:
        await log_in(client)
        value = client.cookies["huifang_session"]
        payload, mac = value.split(".")
        client.cookies.set("huifang_session", f"{payload}A.{mac}", path="/dashboard")
        assert (await client.get("/dashboard")).status_code == 303


async def test_the_page_shows_overdue_callbacks_and_open_escalations(huifang: Huifang) -> None:
    overdue_loan, escalated_loan = new_id("L-OVERDUE"), new_id("L-ESC")
    now = utcnow()
    await seed(
        huifang,
        [
            CallbackView(
                callback_id=new_id("CB"),
                loan_id=overdue_loan,
                stage="final_check",
                branch_id="BR-SH-001",
                party_id="P-1",
                role="guarantor",
                state="due",
                due_at=now - timedelta(days=3650),  # the oldest overdue call heads the list
            ),
            EscalationView(
                escalation_id=new_id("E"),
                loan_id=escalated_loan,
                level=2,
                rule="reason:suspected_fraud",
                assignee="risk_compliance",
                state="open",
                raised_at=now,
            ),
        ],
    )
    async with browser(huifang) as client:
        await log_in(client, "admin")
        page = (await client.get("/dashboard", params={"window": "30d"})).text
    overdue = page.split('id="overdue"', 1)[1].split("</table>", 1)[0]
    escalations = page.split('id="escalations"', 1)[1].split("</table>", 1)[0]
    assert overdue_loan in overdue and "guarantor" in overdue
    assert escalated_loan in escalations and "risk_compliance" in escalations
    assert int(re.search(r'id="kpi-overdue">(\d+)<', page).group(1)) >= 1  # type: ignore[union-attr]
    charts = json.loads(page.split('id="chart-data">', 1)[1].split("</script>", 1)[0])
    assert set(charts) == {"trend", "reasons", "branches", "agents"} and len(charts["trend"]["labels"]) == 31
    for chart in ("branches", "agents"):  # every rate bar has its interval and n
        assert set(charts[chart]) == {"labels", "rate", "low", "high", "n"}
        bars = zip(*(charts[chart][k] for k in ("rate", "low", "high")), strict=True)
        assert all(lo <= r <= hi for r, lo, hi in bars)


async def test_an_agent_with_few_calls_shows_how_unsure_the_rate_is(huifang: Huifang) -> None:
    """5 calls and 4 refusals: 80%, but the 95% interval is 37.6–96.4% and the label says n=5."""
    agent, now = new_id("AG"), utcnow()
    finals = ["refused"] * 4 + ["completed"]
    await seed(huifang, [closed_view(branch="BR-N", closed_at=now, final=f, agent_id=agent) for f in finals])
    async with outcomes_db(huifang).uow() as uow:
        found = await period(
            uow=uow, start=now - timedelta(minutes=1), end=now + timedelta(minutes=1), group_by="agent", tz="UTC",
            branch_id=None,
        )  # fmt: skip
    [mine] = [g for g in found.groups if g.key == agent]
    chart = rates([mine])
    assert chart["labels"] == [f"{agent} (n=5)"] and chart["n"] == [5] and chart["rate"] == [80.0]
    # statsmodels.stats.proportion.proportion_confint(4, 5, method="wilson") = (0.3755, 0.9638)
    assert (chart["low"], chart["high"]) == ([37.6], [96.4])


def arm_rows(experiment: str, arm: str, *, refused: int, completed: int) -> list[object]:
    """Closed callbacks of one arm: views and their arm rows."""
    now = utcnow()
    views = [closed_view(branch="BR-X", closed_at=now, final="refused", reason_code="distrust") for _ in range(refused)]
    views += [closed_view(branch="BR-X", closed_at=now, final="completed") for _ in range(completed)]
    return [*views, *(CallbackArm(callback_id=v.callback_id, experiment=experiment, arm=arm) for v in views)]


@pytest.mark.parametrize(
    ("control", "with_code", "verdict", "p"),
    [
        # (refused, completed) per arm; p as services/outcomes/statistics.py gives it (tested against scipy and
        # statsmodels reference values in tests/unit/test_statistics.py): Fisher when a cell is under 5, else z.
        ((3, 2), (1, 4), "not enough data yet (p = 0.52)", 0.5238095238095264),
        ((8, 32), (14, 26), "not enough data yet (p = 0.13)", 0.13300693368299618),
        ((60, 140), (30, 170), "with_code refuses less (p < 0.001)", 0.00032801631501352924),
        ((30, 170), (60, 140), "with_code refuses more (p < 0.001)", 0.00032801631501352924),
        ((50, 150), (52, 148), "no clear difference from control (p = 0.82)", 0.8185340774375593),
    ],
)
async def test_the_experiments_panel_gives_each_arm_its_rate_interval_n_and_a_verdict(
    huifang: Huifang, control: tuple[int, int], with_code: tuple[int, int], verdict: str, p: float
) -> None:
    name = new_id("exp")
    await seed(
        huifang,
        arm_rows(name, "control", refused=control[0], completed=control[1])
        + arm_rows(name, "with_code", refused=with_code[0], completed=with_code[1]),
    )
    arms = [{"name": "control", "weight": 1}, {"name": "with_code", "weight": 1}]
    policy = Policy.model_validate({"experiments": [{"name": name, "arms": arms}]})
    now = utcnow()
    async with outcomes_db(huifang).uow() as uow:
        [panel] = await experiment_panels(uow=uow, policy=policy, start=now - timedelta(hours=1), end=now)
    first, second = panel.arms
    assert (first.key, first.refused, first.completed) == ("control", *control)
    assert (second.key, second.refused, second.completed) == ("with_code", *with_code)
    for arm in panel.arms:
        assert arm.rate_low is not None and arm.rate_high is not None
        assert arm.rate_low < arm.refusal_rate < arm.rate_high  # type: ignore[operator]
    assert second.p_value == pytest.approx(p, rel=1e-6)
    [said] = panel.verdicts
    assert said.en == verdict and ("p" in said.zh or said.zh == "数据还不够")

