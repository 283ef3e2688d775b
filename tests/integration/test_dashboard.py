"""The dashboard over HTTP: login, session cookie, logout, and what the page shows."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import httpx

from services.outcomes.models import CallbackView, EscalationView
from shared.db import utcnow
from tests.outcomes_support import new_id, seed
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
