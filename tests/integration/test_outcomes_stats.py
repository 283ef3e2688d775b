"""GET /v1/stats/refusals against hand-computed expectations, on both databases."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from services.outcomes.models import CallbackArm
from services.outcomes.statistics import wilson
from services.outcomes.stats import period
from tests.outcomes_support import closed_view, due_callbacks, new_id, outcomes_db, seed
from tests.support import Huifang

CST = timezone(timedelta(hours=8))


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """A time in March 2026, Beijing time."""
    return datetime(2026, 3, day, hour, minute, tzinfo=CST)


RANGE = {"from": at(9, 0).isoformat(), "to": at(12, 0).isoformat()}
BASELINE = {"compare_from": at(5, 0).isoformat(), "compare_to": at(6, 0).isoformat()}


def dataset(branch: str) -> list[Any]:
    """Nine callbacks closed 10-11 March, two outside the range, four in the baseline of 5 March."""

    def row(when: datetime, final: str, **kw: Any) -> Any:
        return closed_view(branch=branch, closed_at=when, final=final, **kw)

    return [
        row(at(10, 9), "completed", agent_id="A1"),
        row(at(10, 10), "refused", reason_code="distrust", agent_id="A1"),
        row(at(10, 23, 30), "refused", role="guarantor", reason_code="privacy_concern", agent_id="A2"),
        row(at(11, 7), "completed", role="co_borrower", agent_id="A2"),  # 10 March in UTC, 11 March in Beijing
        row(at(11, 14), "refused", role="guarantor", reason_code="distrust", agent_id="A2"),
        row(at(11, 15), "completed", stage="approved", agent_id="A3"),
        row(at(11, 16), "expired:attempts_exhausted"),
        row(at(11, 17), "cancelled", role="co_borrower"),
        row(at(11, 18), "wrong_number", role="guarantor", agent_id="A3"),
        row(at(12, 0), "refused", reason_code="other", agent_id="A1"),  # the range's end is exclusive
        row(at(8, 23, 59), "completed", agent_id="A1"),  # before the range
        row(at(5, 10), "refused", reason_code="time_conflict", agent_id="A1"),
        row(at(5, 11), "refused", reason_code="distrust", agent_id="A1"),
        row(at(5, 12), "refused", reason_code="distrust", agent_id="A2"),
        row(at(5, 13), "completed", agent_id="A2"),
    ]


def counts(
    closed: int, completed: int | None, refused: int, rate: float | None, answered: int | None = None
) -> dict[str, Any]:
    """A group's counts; its interval is the Wilson interval of refused ÷ answered (completed + refused)."""
    bounds = wilson(successes=refused, trials=answered if answered is not None else (completed or 0) + refused)
    low, high = (pytest.approx(bounds[0]), pytest.approx(bounds[1])) if bounds else (None, None)
    return {"closed": closed, "completed": completed, "refused": refused, "refusal_rate": rate} | {
        "rate_low": low,
        "rate_high": high,
    }


def plain(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups other than arms, whose p_value is always null, without it."""
    assert all(g.pop("p_value") is None for g in found)
    return found


def groups(body: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    return {g.pop("key"): g for g in plain(body["groups"])}


@pytest.fixture(scope="module")
async def branch(huifang: Huifang) -> str:
    """A branch of its own, seeded once per database, so other tests' callbacks never count."""
    name = new_id("BR-STATS")
    await seed(huifang, dataset(name))
    return name


async def stats(huifang: Huifang, **params: Any) -> Any:
    async with huifang.client("outcomes", "supervisor") as client:
        return await client.get("/v1/stats/refusals", params=params)


async def test_totals_and_reasons(huifang: Huifang, branch: str) -> None:
    response = await stats(huifang, **RANGE, branch_id=branch, group_by="reason")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["totals"] == counts(9, 3, 3, 0.5)
    # 3 refused of 6 answered: the Wilson interval statsmodels gives
    assert (body["totals"]["rate_low"], body["totals"]["rate_high"]) == pytest.approx((0.18761, 0.81239), abs=1e-5)
    assert body["from"] == "2026-03-09T00:00:00+08:00" and body["compare"] is None
    # Each reason's rate is its share of answered calls (3 completed + 3 refused); most frequent first.
    assert plain(body["groups"]) == [
        {"key": "distrust", **counts(2, None, 2, pytest.approx(2 / 6), answered=6)},
        {"key": "privacy_concern", **counts(1, None, 1, pytest.approx(1 / 6), answered=6)},
    ]


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [
        (
            "role",
            {
                "borrower": counts(4, 2, 1, pytest.approx(1 / 3)),
                "co_borrower": counts(2, 1, 0, 0.0),
                "guarantor": counts(3, 0, 2, 1.0),
            },
        ),
        ("stage", {"final_check": counts(8, 2, 3, 0.6), "approved": counts(1, 1, 0, 0.0)}),
        (
            "agent",
            {
                "A1": counts(2, 1, 1, 0.5),
                "A2": counts(3, 1, 2, pytest.approx(2 / 3)),
                "A3": counts(2, 1, 0, 0.0),
                None: counts(2, 0, 0, None),  # expired and cancelled: no agent closed them
            },
        ),
        (
            "day",
            {"2026-03-10": counts(3, 1, 2, pytest.approx(2 / 3)), "2026-03-11": counts(6, 2, 1, pytest.approx(1 / 3))},
        ),
    ],
)
async def test_groups(huifang: Huifang, branch: str, group_by: str, expected: dict[Any, Any]) -> None:
    response = await stats(huifang, **RANGE, branch_id=branch, group_by=group_by)
    assert response.status_code == 200, response.text
    assert groups(response.json()) == expected


async def test_branch_groups_are_ordered_and_nulls_last(huifang: Huifang, branch: str) -> None:
    by_branch = (await stats(huifang, **RANGE, branch_id=branch, group_by="branch")).json()
    by_agent = (await stats(huifang, **RANGE, branch_id=branch, group_by="agent")).json()
    assert plain(by_branch["groups"]) == [{"key": branch, **counts(9, 3, 3, 0.5)}]
    assert [g["key"] for g in by_agent["groups"]] == ["A1", "A2", "A3", None]


async def test_days_follow_the_requested_time_zone(huifang: Huifang, branch: str) -> None:
    body = (await stats(huifang, **RANGE, branch_id=branch, group_by="day", tz="UTC")).json()
    # 11 March 07:00 in Beijing is still 10 March in UTC.
    assert groups(body) == {"2026-03-10": counts(4, 2, 2, 0.5), "2026-03-11": counts(5, 1, 1, 0.5)}
    assert body["timezone"] == "UTC"


async def test_hours_are_local_hours(huifang: Huifang, branch: str) -> None:
    body = (await stats(huifang, **RANGE, branch_id=branch, group_by="hour")).json()
    found = groups(body)
    assert len(found) == 9
    assert found["2026-03-10T23:00"] == counts(1, 0, 1, 1.0)
    assert found["2026-03-11T07:00"] == counts(1, 1, 0, 0.0)


async def test_before_and_after_comparison(huifang: Huifang, branch: str) -> None:
    body = (await stats(huifang, **RANGE, **BASELINE, branch_id=branch, group_by="reason")).json()
    assert body["compare"]["totals"] == counts(4, 1, 3, 0.75)
    assert body["compare"]["from"] == "2026-03-05T00:00:00+08:00"
    assert plain(body["compare"]["groups"]) == [
        {"key": "distrust", **counts(2, None, 2, 0.5, answered=4)},
        {"key": "time_conflict", **counts(1, None, 1, 0.25, answered=4)},
    ]
    assert body["change"]["refusal_rate_points"] == pytest.approx(-0.25)
    assert body["change"]["relative"] == pytest.approx(-1 / 3)  # a third fewer refusals, as the bank saw


async def test_an_empty_period_has_no_rate(huifang: Huifang, branch: str) -> None:
    body = (await stats(huifang, **{"from": at(1, 0).isoformat(), "to": at(2, 0).isoformat()}, branch_id=branch)).json()
    assert body["totals"] == counts(0, 0, 0, None) and body["groups"] == []


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"from": "2026-03-12T00:00:00+08:00", "to": "2026-03-09T00:00:00+08:00"}, "before"),
        ({"from": "2026-03-12T00:00:00+08:00", "to": "2026-03-12T00:00:00+08:00"}, "before"),
        ({"from": "2026-03-09T00:00:00", "to": "2026-03-12T00:00:00+08:00"}, "timezone"),
        ({"from": "yesterday"}, "datetime"),
        ({"group_by": "weather"}, "group_by"),
        ({"compare_from": "2026-03-01T00:00:00+08:00"}, "compare_to"),
        ({"tz": "Mars/Olympus"}, "Mars/Olympus"),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z", "group_by": "minute"}, "buckets"),
    ],
)
async def test_bad_queries_say_what_is_wrong(huifang: Huifang, params: dict[str, str], says: str) -> None:
    response = await stats(huifang, **params)
    assert response.status_code == 422
    assert says in str(response.json()["detail"])


async def test_stats_need_a_supervisor(huifang: Huifang) -> None:
    async with huifang.client("outcomes", "agent") as agent, huifang.client("outcomes", None) as anonymous:
        assert (await agent.get("/v1/stats/refusals")).status_code == 403
        assert (await anonymous.get("/v1/stats/refusals")).status_code == 401


async def test_recorded_attempts_show_up_in_the_stats(huifang: Huifang) -> None:
    """End to end: attempts over HTTP close callbacks, and the statistics count them."""
    branch = new_id("BR-LIVE")
    _, callbacks = await due_callbacks(huifang, roles=("borrower", "co_borrower", "guarantor"), branch=branch)
    bodies = {
        "borrower": {"disposition": "completed", "agent_id": "AG-1"},
        "co_borrower": {"disposition": "refused", "reason_code": "emotional_distress", "agent_id": "AG-2"},
        "guarantor": {"disposition": "no_answer", "agent_id": "AG-2"},
    }
    # A supervisor records for the named agents (CONTRACT.md section 3); an agent's key could not.
    async with huifang.client("outcomes", "supervisor") as client:
        for role, body in bodies.items():
            assert (await client.post(f"/v1/callbacks/{callbacks[role]}/attempts", json=body)).status_code == 201
    by_agent = (await stats(huifang, branch_id=branch, group_by="agent")).json()
    assert by_agent["totals"] == counts(2, 1, 1, 0.5)  # no_answer leaves the guarantor's callback open
    assert groups(by_agent) == {"AG-1": counts(1, 1, 0, 0.0), "AG-2": counts(1, 0, 1, 1.0)}
    by_reason = (await stats(huifang, branch_id=branch, group_by="reason")).json()
    assert plain(by_reason["groups"]) == [{"key": "emotional_distress", **counts(1, None, 1, 0.5, answered=2)}]


async def test_ten_second_buckets_of_the_live_view(huifang: Huifang) -> None:
    """The dashboard's live view groups by 10 seconds (not offered by the API), on both databases."""
    branch = new_id("BR-LIVE10")
    at_s = [datetime(2026, 3, 10, 9, 0, s, tzinfo=CST) for s in (5, 9, 15, 59)]
    finals = ["refused", "completed", "completed", "refused"]
    await seed(huifang, [closed_view(branch=branch, closed_at=t, final=f) for t, f in zip(at_s, finals, strict=True)])
    async with outcomes_db(huifang).uow() as uow:
        found = await period(
            uow=uow, start=at(10, 9), end=at(10, 10), group_by="10s", tz="Asia/Shanghai", branch_id=branch
        )
    assert {g.key: (g.closed, g.refused) for g in found.groups} == {
        "2026-03-10T09:00:00": (2, 1),
        "2026-03-10T09:00:10": (1, 0),
        "2026-03-10T09:00:50": (1, 1),
    }


async def test_arms_of_an_experiment_with_intervals_and_p_values(huifang: Huifang) -> None:
    """group_by=arm: each arm's counts, rate, interval and p-value against the first arm (by name here,
    since this experiment is not in the test policy). Reference p-values computed once with scipy/statsmodels."""
    branch, experiment = new_id("BR-ARMS"), new_id("EXP")
    plan = {  # arm -> (refused, completed, still open or expired)
        "a_control": (30, 70, 2),
        "b_more": (45, 55, 0),  # every cell >= 5: two-proportion z-test
        "c_small": (5, 1, 0),  # a cell under 5: Fisher's exact test
    }
    rows: list[Any] = []
    for arm, (refused, completed, expired) in plan.items():
        finals = ["refused"] * refused + ["completed"] * completed + ["expired:deadline"] * expired
        for n, final in enumerate(finals):
            view = closed_view(branch=branch, closed_at=at(10, 9, n % 60), final=final, reason_code=None)
            rows += [view, CallbackArm(callback_id=view.callback_id, experiment=experiment, arm=arm)]
    # a callback of the same branch outside the experiment, and one in another experiment, count for neither
    outside = closed_view(branch=branch, closed_at=at(10, 10), final="refused", reason_code="distrust")
    other = closed_view(branch=branch, closed_at=at(10, 10), final="refused", reason_code="distrust")
    rows += [outside, other, CallbackArm(callback_id=other.callback_id, experiment=new_id("EXP"), arm="a_control")]
    await seed(huifang, rows)

    response = await stats(huifang, **RANGE, branch_id=branch, group_by="arm", experiment=experiment)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["experiment"] == experiment
    assert body["totals"] == counts(208, 126, 80, pytest.approx(80 / 206))
    found = {g["key"]: g for g in body["groups"]}
    assert [g["key"] for g in body["groups"]] == ["a_control", "b_more", "c_small"]
    assert found["a_control"]["p_value"] == pytest.approx(1.0)
    assert found["b_more"]["p_value"] == pytest.approx(0.02845973691631055, rel=1e-9)  # statsmodels z-test
    assert found["c_small"]["p_value"] == pytest.approx(0.014462725458646443, rel=1e-9)  # scipy fisher_exact
    assert (found["a_control"]["rate_low"], found["a_control"]["rate_high"]) == pytest.approx(
        (0.21894885294932756, 0.39584854633346667), rel=1e-9
    )  # statsmodels proportion_confint(30, 100, method="wilson")
    assert {k: (g["closed"], g["refused"], g["completed"]) for k, g in found.items()} == {
        "a_control": (102, 30, 70),
        "b_more": (100, 45, 55),
        "c_small": (6, 5, 1),
    }


@pytest.mark.parametrize("params", [{"group_by": "arm"}, {"group_by": "reason", "experiment": "caller_code"}])
async def test_arm_and_experiment_go_together(huifang: Huifang, params: dict[str, str]) -> None:
    response = await stats(huifang, **params)
    assert response.status_code == 422
    assert "experiment" in str(response.json()["detail"])
