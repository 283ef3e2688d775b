"""The party's own page end to end: from a real notice on the broker, GET the link, POST each action back."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlmodel import select

from cli.demo import Demo, visit_page
from services.outcomes.models import Attempt, PartyPage
from shared import links
from tests.outcomes_support import outcomes_db
from tests.party_support import noticed, open_page, page_path, post, slots
from tests.support import KEYS, Huifang, wait_for

ITEMS = ["identity", "loan_amount", "loan_purpose", "role_consent"]


def outcomes_secret(huifang: Huifang) -> bytes:
    secret: bytes = huifang.servers["outcomes"][0].config.app.state.runtime.link_secret  # type: ignore[attr-defined]
    return secret


def raw_records(huifang: Huifang, loan: str) -> list[tuple[str, str]]:
    """(type, raw JSON) of every event of the loan on any topic."""
    out = []
    for rec in huifang.tap.records:
        try:
            event = rec.event
        except ValueError:
            continue
        if isinstance(event, dict) and (event.get("data") or {}).get("loan_id") == loan:
            out.append((str(event.get("type")), rec.value.decode()))
    return out


async def test_notice_carries_code_and_link_and_the_page_shows_only_what_it_should(huifang: Huifang) -> None:
    loan, notice = await noticed(huifang)
    code = notice["caller_code"]
    assert len(code) == 6 and code.isdigit()
    [due] = await huifang.tap.wait_events("callback.due", loan)
    assert due["data"]["caller_code"] == code  # fixed per callback
    assert page_path(due["data"]).split(".")[0] == page_path(notice).split(".")[0]  # the same callback
    # The code and the link travel only on the two personal events (CONTRACT.md 2.3).
    token = page_path(notice).removeprefix("/p/")
    for type_, raw in raw_records(huifang, loan):
        if type_ not in ("callback.notice.requested", "callback.due"):
            assert code not in raw and token.split(".")[2] not in raw, type_
    async with huifang.client("outcomes", role=None) as client:
        response = await open_page(client, page_path(notice))
    html = response.text
    assert response.headers["cache-control"] == "no-store"
    assert '<html lang="zh-CN">' in html and "<script" not in html
    for shown in ("Huifang Demo Bank", "95500", code, "张*", "身份核实", "贷款金额", "审批前的核实回访"):
        assert shown in html, shown
    for personal in ("张伟", notice["phone"], notice["email"], notice["phone"][3:]):
        assert personal not in html, personal
    async with outcomes_db(huifang).uow() as uow:
        row = await uow.session.get(PartyPage, notice["callback_id"])
    assert row is not None and code not in (row.caller_code_enc or "") and "张" not in row.masked_name_enc


async def test_the_page_speaks_english_to_an_english_party(huifang: Huifang) -> None:
    _, notice = await noticed(huifang, language="en-GB", name="Anna Lee")
    async with huifang.client("outcomes", role=None) as client:
        html = (await open_page(client, page_path(notice))).text
    assert '<html lang="en">' in html and "Caller code" in html and "A*" in html and "Anna Lee" not in html
    assert "your identity" in html and notice["caller_code"] in html


async def test_confirm_completes_on_the_self_service_channel_once(huifang: Huifang) -> None:
    loan, notice = await noticed(huifang)
    path = page_path(notice)
    async with huifang.client("outcomes", role=None) as client:
        html = (await open_page(client, path)).text
        partial = await post(client, path, html, action="confirm", item=ITEMS[:2])
        assert partial.status_code == 422 and "请勾选全部事项" in partial.text
        first = await post(client, path, html, action="confirm", item=ITEMS)
        again = await post(client, path, html, action="confirm", item=ITEMS)
        closed = await client.get(path)
    assert first.status_code == 303 and again.status_code == 303
    [outcome] = await huifang.tap.wait_events("callback.outcome.recorded", loan)
    data = outcome["data"]
    assert (data["disposition"], data["channel"], data["agent_id"]) == ("completed", "self_service", None)
    [done] = await huifang.tap.wait_events("loan.verification.completed", loan)
    assert done["data"]["status"] == "verified"
    # A closed callback's page says what was recorded and offers nothing more.
    assert closed.status_code == 200 and "在本页完成" in closed.text and "<form" not in closed.text
    async with huifang.client("outcomes", role=None) as client:
        late = await post(client, path, html, action="not_me")
    assert late.status_code == 303
    async with outcomes_db(huifang).uow() as uow:
        rows = list((await uow.session.execute(select(Attempt).where(Attempt.loan_id == loan))).scalars())
    assert [(r.disposition, r.channel, r.agent_id) for r in rows] == [("completed", "self_service", None)]
    assert len(huifang.tap.events("callback.outcome.recorded", loan)) == 1


async def test_reschedule_moves_the_call_to_an_offered_slot_without_using_an_attempt(huifang: Huifang) -> None:
    loan, notice = await noticed(huifang)
    await huifang.tap.wait_events("callback.due", loan)
    path = page_path(notice)
    async with huifang.client("outcomes", role=None) as client:
        html = (await open_page(client, path)).text
        offered = slots(html)
        assert offered and all(s > datetime.now(UTC) for s in offered)
        deadline = datetime.fromisoformat(notice["deadline"])
        assert all(s < deadline for s in offered)
        off_list = (offered[0] + timedelta(minutes=7)).isoformat()
        refused = await post(client, path, html, action="reschedule", slot=off_list)
        assert refused.status_code == 422
        chosen = offered[-1]
        moved = await post(client, path, html, action="reschedule", slot=chosen.isoformat())
        again = await post(client, path, html, action="reschedule", slot=offered[0].isoformat())
        after = await client.get(path)
    assert moved.status_code == 303 and again.status_code == 303
    [outcome] = await huifang.tap.wait_events("callback.outcome.recorded", loan)
    assert (outcome["data"]["disposition"], outcome["data"]["channel"]) == ("reschedule_requested", "self_service")
    [rescheduled] = await huifang.tap.wait_events("callback.rescheduled", loan)
    assert rescheduled["data"]["reason"] == "party_requested"
    assert datetime.fromisoformat(rescheduled["data"]["due_at"]) == chosen
    async with huifang.client("scheduler") as client:
        cb = (await client.get(f"/v1/callbacks/{notice['callback_id']}")).json()
    assert cb["calls_made"] == 0 and cb["attempt"] == 1 and cb["state"] == "scheduled"
    assert after.status_code == 200 and 'name="slot"' not in after.text  # the move is taken; the page says when
    assert len(huifang.tap.events("callback.outcome.recorded", loan)) == 1


async def test_decline_keeps_the_text_encrypted_and_off_every_topic(huifang: Huifang) -> None:
    loan, notice = await noticed(huifang)
    path = page_path(notice)
    text = "下周出差 private-note-7731"
    async with huifang.client("outcomes", role=None) as client:
        html = (await open_page(client, path)).text
        bad = await post(client, path, html, action="decline", reason="suspected_fraud")
        assert bad.status_code == 422
        ok = await post(client, path, html, action="decline", reason="time_conflict", text=text)
    assert ok.status_code == 303
    [refused] = await huifang.tap.wait_events("callback.refused", loan)
    assert (refused["data"]["reason_code"], refused["data"]["agent_id"]) == ("time_conflict", None)
    [outcome] = huifang.tap.events("callback.outcome.recorded", loan)
    assert (outcome["data"]["disposition"], outcome["data"]["channel"]) == ("refused", "self_service")
    await huifang.tap.wait_events("loan.verification.completed", loan)
    assert all("private-note-7731" not in rec.value.decode(errors="replace") for rec in huifang.tap.records)
    async with outcomes_db(huifang).uow() as uow:
        [row] = (await uow.session.execute(select(Attempt).where(Attempt.loan_id == loan))).scalars()
    assert row.notes_enc is not None and "private-note" not in row.notes_enc
    cipher = huifang.servers["outcomes"][0].config.app.state.runtime.cipher  # type: ignore[attr-defined]
    assert cipher.decrypt(row.notes_enc) == text


async def test_not_me_is_a_fraud_refusal_that_escalates_at_once(huifang: Huifang) -> None:
    loan, notice = await noticed(huifang)
    path = page_path(notice)
    async with huifang.client("outcomes", role=None) as client:
        html = (await open_page(client, path)).text
        response = await post(client, path, html, action="not_me")
        closed = await client.get(path)
    assert response.status_code == 303
    [refused] = await huifang.tap.wait_events("callback.refused", loan)
    assert refused["data"]["reason_code"] == "suspected_fraud"
    [raised] = await huifang.tap.wait_events("escalation.raised", loan)
    assert raised["data"]["level"] == 1
    assert "称从未申请贷款" in closed.text and "<form" not in closed.text


async def test_bad_links_get_a_404_page_with_the_hotline(huifang: Huifang) -> None:
    loan, notice = await noticed(huifang)
    path = page_path(notice)
    callback_id, expires, sig = path.removeprefix("/p/").split(".")
    secret = outcomes_secret(huifang)
    expired = links.sign(secret=secret, callback_id=callback_id, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    other = links.sign(secret=secret, callback_id="CB-unknown", expires_at=datetime.now(UTC) + timedelta(days=1))
    bad = [
        f"/p/{callback_id}.{expires}.{sig[:-2]}xx",  # tampered signature
        f"/p/{callback_id}.{int(expires) + 86_400}.{sig}",  # a later expiry, same signature
        f"/p/{expired}",
        f"/p/{other}",  # well signed, but no such callback
        "/p/nonsense",
    ]
    async with huifang.client("outcomes", role=None) as client:
        await open_page(client, path)
        for target in bad:
            for response in (await client.get(target), await client.post(target, data={"action": "not_me"})):
                assert response.status_code == 404, target
                assert "95500" in response.text and "此链接无效" in response.text and "not valid" in response.text
    assert huifang.tap.events("callback.outcome.recorded", loan) == []


async def test_forged_forms_are_refused_and_posts_are_limited_per_token(huifang: Huifang) -> None:
    loan, notice = await noticed(huifang)
    path = page_path(notice)
    async with huifang.client("outcomes", role=None) as client:
        await open_page(client, path)
        statuses = [
            (await client.post(path, data={"action": "not_me", "form": "forged"})).status_code for _ in range(10)
        ]
        limited = await client.post(path, data={"action": "not_me"})
    assert statuses == [403] * 10
    assert limited.status_code == 429 and limited.headers["retry-after"] == "60"
    assert huifang.tap.events("callback.outcome.recorded", loan) == []


async def test_stats_group_refusals_by_channel(huifang: Huifang) -> None:
    loan, notice = await noticed(huifang)
    async with huifang.client("outcomes", role=None) as client:
        html = (await open_page(client, page_path(notice))).text
        await post(client, page_path(notice), html, action="decline", reason="privacy_concern")
    await huifang.tap.wait_events("loan.verification.completed", loan)
    async with huifang.client("outcomes", role="supervisor") as client:
        stats = await wait_for(lambda: _channel_stats(client), 10, "self_service group")
    assert stats["refused"] >= 1


async def _channel_stats(client: httpx.AsyncClient) -> dict[str, Any] | None:
    response = await client.get("/v1/stats/refusals", params={"group_by": "channel"})
    assert response.status_code == 200, response.text
    groups: dict[str, dict[str, Any]] = {g["key"]: g for g in response.json()["groups"]}
    return groups.get("self_service")


async def dashboard_page_use(huifang: Huifang) -> tuple[int, int]:
    """(callbacks closed on the party's page, reschedules made there) as the dashboard shows them."""
    async with httpx.AsyncClient(base_url=huifang.url("outcomes"), timeout=10) as client:
        login = await client.post("/dashboard/login", data={"key": KEYS["supervisor"]})
        assert login.status_code == 303
        html = (await client.get("/dashboard")).text
    closed = re.search(r'id="kpi-page-closed">(\d+)<', html)
    moved = re.search(r'id="kpi-page-reschedules">(\d+)<', html)
    assert closed is not None and moved is not None
    return int(closed.group(1)), int(moved.group(1))


async def test_the_dashboard_counts_callbacks_closed_on_the_page_and_moves_parties_made(huifang: Huifang) -> None:
    before = await dashboard_page_use(huifang)
    loan, notice = await noticed(huifang)
    await huifang.tap.wait_events("callback.due", loan)
    path = page_path(notice)
    async with huifang.client("outcomes", role=None) as client:
        html = (await open_page(client, path)).text
        await post(client, path, html, action="reschedule", slot=slots(html)[0].isoformat())
        await post(client, path, html, action="confirm", item=ITEMS)
    await huifang.tap.wait_events("loan.verification.completed", loan)
    assert await dashboard_page_use(huifang) == (before[0] + 1, before[1] + 1)


async def test_the_demos_parties_act_on_their_real_pages(huifang: Huifang) -> None:
    demo = Demo(settings=huifang.settings, rng=random.Random(7), seconds=60)
    recorded = []
    for action in ("confirm", "reschedule", "decline", "not_me"):
        loan, notice = await noticed(huifang)
        await huifang.tap.wait_events("callback.due", loan)
        async with huifang.client("outcomes", role=None) as client:
            await open_page(client, page_path(notice))
        await visit_page(demo, huifang.url("outcomes"), page_path(notice), actions={action: 1})
        [outcome] = await huifang.tap.wait_events("callback.outcome.recorded", loan)
        recorded.append((outcome["data"]["disposition"], outcome["data"]["reason_code"]))
    assert [d for d, _ in recorded] == ["completed", "reschedule_requested", "refused", "refused"]
    assert recorded[2][1] != "suspected_fraud" and recorded[3][1] == "suspected_fraud"
    assert all(key.endswith(" 303") for key in demo.page_actions), demo.page_actions
