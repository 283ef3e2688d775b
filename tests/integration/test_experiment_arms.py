"""A two-arm experiment end to end on the real broker, on both databases (CONTRACT.md 2.3, 2.4, 3).

The policy runs `caller_code` with a `control` arm (no caller code) and a `with_code` arm: the arm
travels on `callback.scheduled`, only the `with_code` arm's notices carry the code (on the event and in
the SMS text) and its message variant `explained` (the notifier kept the arm from `callback.scheduled`),
and the stats endpoint gives both arms with intervals and a p-value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from services.scheduler.experiments import assign_arm
from shared.settings import ROOT
from tests.outcomes_support import new_id
from tests.support import Huifang, loan_event, wait_for

EXPERIMENT = """
[[experiments]]
name = "caller_code"
arms = [
  {name = "control", weight = 50, caller_code = false},
  {name = "with_code", weight = 50, caller_code = true, message = "explained"},
]
"""
WEIGHTS = [("control", 50.0), ("with_code", 50.0)]
PER_ARM = 3


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def system(
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    webhook_server: HTTPServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Huifang]:
    """The whole system with the experiment in its policy, on its own topics and database."""
    workdir = tmp_path_factory.mktemp(f"experiments-{request.param}")
    policy = workdir / "policy.toml"
    policy.write_text((ROOT / "tests" / "policy-test.toml").read_text(encoding="utf-8") + EXPERIMENT, encoding="utf-8")
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    huifang = Huifang(
        kind=request.param, bootstrap=kafka_bootstrap, database_url=url, workdir=workdir, webhook=webhook_server,
        policy=policy,
    )  # fmt: skip
    await huifang.start()
    try:
        yield huifang
    finally:
        await huifang.stop()


def loans_per_arm() -> dict[str, list[str]]:
    """Fresh loan ids, PER_ARM of them in each arm by the contract's stable hash."""
    found: dict[str, list[str]] = {"control": [], "with_code": []}
    while min(len(ids) for ids in found.values()) < PER_ARM:
        loan = new_id("L")
        arm = assign_arm(experiment="caller_code", weights=WEIGHTS, loan_id=loan)
        if len(found[arm]) < PER_ARM:
            found[arm].append(loan)
    return found


async def test_arms_change_the_notice_and_the_stats_compare_them(system: Huifang) -> None:
    arms = loans_per_arm()
    arm_of = {loan: arm for arm, loans in arms.items() for loan in loans}
    for loan in arm_of:
        await system.publish_event("loan.stage.changed", loan_event(loan, roles=("borrower",)), key=loan)

    notices: dict[str, dict[str, Any]] = {}
    callbacks: dict[str, str] = {}
    for loan, arm in arm_of.items():
        [scheduled] = await system.tap.wait_events("callback.scheduled", loan)
        assert scheduled["data"]["arms"]["caller_code"] == arm  # beside the test policy's own A/A experiment
        [notice] = await system.tap.wait_events("callback.notice.requested", loan)
        notices[loan] = notice["data"]
        [due] = await system.tap.wait_events("callback.due", loan)
        callbacks[loan] = due["data"]["callback_id"]
        code = notice["data"]["caller_code"]
        if arm == "with_code":
            assert code is not None and len(code) == 6 and code.isdigit()
            assert due["data"]["caller_code"] == code
        else:
            assert code is None and due["data"]["caller_code"] is None
        assert notice["data"]["self_service_url"]  # the arm turns off the code only

    # What the party reads: the SMS text names the code in the with_code arm only.
    for loan, notice in notices.items():
        phone = notice["phone"]
        await wait_for(lambda phone=phone: bool(system.sms_sent(phone)), 30.0, f"the notice SMS to {phone}")
        text = str(system.sms_sent(phone)[0])
        why = "为什么要回访" in text or "Why we call" in text  # the variant's paragraph
        if arm_of[loan] == "with_code":
            assert notice["caller_code"] in text and ("核验码" in text or "code" in text)
            assert why, text
        else:
            assert "核验码" not in text and not why

    # Every control party refuses, every with_code party confirms.
    async with system.client("outcomes", "agent") as agent:
        for loan, callback_id in callbacks.items():
            body = (
                {"disposition": "refused", "reason_code": "distrust"}
                if arm_of[loan] == "control"
                else {"disposition": "completed"}
            )
            response = await agent.post(f"/v1/callbacks/{callback_id}/attempts", json=body)
            assert response.status_code == 201, response.text

    async with system.client("outcomes", "supervisor") as supervisor:
        response = await supervisor.get("/v1/stats/refusals", params={"group_by": "arm", "experiment": "caller_code"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [g["key"] for g in body["groups"]] == ["control", "with_code"]  # the policy's order: control first
    control, with_code = body["groups"]
    assert (control["closed"], control["refused"], control["completed"]) == (PER_ARM, PER_ARM, 0)
    assert (with_code["closed"], with_code["refused"], with_code["completed"]) == (PER_ARM, 0, PER_ARM)
    # Reference values computed once with statsmodels (Wilson) and scipy (Fisher: cells under 5).
    assert (control["rate_low"], control["rate_high"]) == pytest.approx((0.43850296824495444, 1.0))
    assert (with_code["rate_low"], with_code["rate_high"]) == pytest.approx((0.0, 0.5614970317550455))
    assert control["p_value"] == pytest.approx(1.0)
    assert with_code["p_value"] == pytest.approx(0.1)
    assert body["totals"]["refused"] == PER_ARM and body["totals"]["closed"] == 2 * PER_ARM
