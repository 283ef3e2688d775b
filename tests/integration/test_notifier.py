"""The notifier on real receivers: an HTTP webhook and SMS gateway, an SMTP server, real Kafka, both databases.

Only the notifier runs here; the tests publish the events the scheduler and outcomes would, with a
short retry base and a six-second acknowledgement deadline (tests/policy-notifier.toml).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from cli.devstack import free_port
from cli.main import _sink
from services.notifier.channels.sms import send_sms
from services.notifier.channels.webhook import deliver, verify
from shared.db import Database
from shared.kafka import create_topics
from shared.settings import Settings
from tests.support import WEBHOOK_SECRET, Huifang, wait_for

ROOT = Path(__file__).resolve().parents[2]
ACK_TIMEOUT = timedelta(seconds=6)
MAX_ATTEMPTS = 4
QUESTIONNAIRE = "https://bank.example/huifang/q/"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    raw: bytes
    status: int


@dataclass
class Receiver:
    """Webhook receiver and SMS gateway in one: records each request, answers by a script per loan or phone."""

    scripts: dict[str, list[int]] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, request: Request) -> Response:
        raw = request.get_data()
        body = json.loads(raw)
        key = body.get("loan_id") or body.get("to")
        with self._lock:
            script = self.scripts.get(key)
            status = script.pop(0) if script else 200
            self.requests.append(Received(request.path, dict(request.headers), body, raw, status))
        return Response("ok" if status < 300 else "no", status=status)

    def webhooks(self, loan_id: str) -> list[Received]:
        return [r for r in self.requests if r.path == "/hooks" and r.body.get("loan_id") == loan_id]

    def sms(self, phone: str) -> list[Received]:
        return [r for r in self.requests if r.path == "/sms" and r.body.get("to") == phone]


class Mailbox:
    """aiosmtpd handler: keeps accepted mail; refuses recipients by a script of SMTP replies."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.refuse: dict[str, list[str]] = {}
        self.refused: list[str] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        script = self.refuse.get(address)
        if script:
            reply = script.pop(0)
            self.refused.append(address)
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        return "250 Message accepted"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]


@dataclass
class Rig:
    system: Huifang
    receiver: Receiver
    mailbox: Mailbox

    def db(self) -> Database:
        server = self.system.servers["notifier"][0]
        db: Database = server.config.app.state.runtime.db
        return db


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def rig(
    request: pytest.FixtureRequest, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rig]:
    receiver = Receiver()
    http = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    http.expect_request("/hooks", method="POST").respond_with_handler(receiver.handle)
    http.expect_request("/sms", method="POST").respond_with_handler(receiver.handle)
    http.start()
    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    system = Huifang(
        kind=request.param,
        bootstrap=kafka_bootstrap,
        database_url=url,
        workdir=tmp_path_factory.mktemp(f"notifier-{request.param}"),
        webhook=http,
        policy=ROOT / "tests" / "policy-notifier.toml",
    )
    system.settings = system.settings.model_copy(
        update={
            "huifang_notify_webhook_url": http.url_for("/hooks"),
            "huifang_sms_webhook_url": http.url_for("/sms"),
            "huifang_smtp_host": "127.0.0.1",
            "huifang_smtp_port": smtp.port,
            "huifang_smtp_from": "huifang@bank.example",
            "huifang_smtp_tls": "none",  # the local aiosmtpd speaks no TLS
            "huifang_notify_max_attempts": MAX_ATTEMPTS,
            "huifang_notify_retry_base_seconds": 0.5,
        }
    )
    await create_topics(system.settings)
    from aiokafka import AIOKafkaProducer

    system.producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await system.producer.start()
    await system.tap.start()
    await system.start_service("notifier", system.settings)
    try:
        yield Rig(system, receiver, mailbox)
    finally:
        await system.stop()
        smtp.stop()
        http.clear()
        http.stop()


def new_loan() -> str:
    return f"L-{uuid.uuid4().hex[:12]}"


def new_phone() -> str:
    return f"+86139{uuid.uuid4().int % 10**8:08d}"


def loan(loan_id: str, *, phone: str, email_: str | None = None, language: str = "zh-CN") -> dict[str, Any]:
    return {
        "loan_id": loan_id,
        "stage": "final_check",
        "branch_id": "BR-SH-001",
        "officer": {"id": "EMP-778", "name": "李娜", "email": f"officer-{loan_id}@bank.example"},
        "parties": [
            {
                "party_id": "P-1",
                "role": "borrower",
                "name": "张伟" if language == "zh-CN" else "Wei Zhang",
                "phone": phone,
                "email": email_,
                "timezone": "Asia/Shanghai",
                "language": language,
                "contact_consent": True,
            }
        ],
    }


def ref(loan_id: str, callback_id: str, state: str = "scheduled") -> dict[str, Any]:
    return {
        "loan_id": loan_id,
        "callback_id": callback_id,
        "party_id": "P-1",
        "role": "borrower",
        "stage": "final_check",
        "branch_id": "BR-SH-001",
        "attempt": 1,
        "state": state,
    }


def refusal(loan_id: str, reason: str, *, refusals: int = 1) -> dict[str, Any]:
    return {
        **ref(loan_id, f"cb-{uuid.uuid4().hex[:8]}", "refused"),
        "reason_code": reason,
        "agent_id": "A-1",
        "refusals_for_loan": refusals,
        "occurred_at": datetime.now(UTC).isoformat(),
    }


async def notifications(rig: Rig, loan_id: str) -> list[dict[str, Any]]:
    async with rig.system.client("notifier", "supervisor") as client:
        response = await client.get("/v1/notifications", params={"loan_id": loan_id})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def settled(rig: Rig, loan_id: str, count: int) -> list[dict[str, Any]]:
    """Wait until the loan has `count` notifications and none is pending any more."""

    async def done() -> list[dict[str, Any]] | None:
        items = await notifications(rig, loan_id)
        return items if len(items) == count and all(n["status"] != "pending" for n in items) else None

    result: list[dict[str, Any]] = await wait_for(done, 30, f"{count} settled notifications for {loan_id}")
    return result


async def processed(rig: Rig, event_id: str) -> bool:
    """Whether the notifier has committed its handling of this event."""
    async with rig.db().uow() as uow:
        query = sa.text("SELECT 1 FROM processed_event WHERE event_id = :e")
        return (await uow.session.execute(query, {"e": event_id})).first() is not None


async def waiting(rig: Rig, loan_id: str) -> int:
    async with rig.db().uow() as uow:
        query = sa.text("SELECT count(*) FROM officer_wait WHERE loan_id = :l")
        return int((await uow.session.execute(query, {"l": loan_id})).scalar_one())


def assert_signed(received: Received) -> None:
    headers = received.headers
    args = (WEBHOOK_SECRET, headers["X-Huifang-Id"], headers["X-Huifang-Timestamp"])
    assert verify(*args, received.raw, headers["X-Huifang-Signature"])
    assert not verify(*args, received.raw + b" ", headers["X-Huifang-Signature"])


async def test_notice_by_sms_in_party_language_once_per_event(rig: Rig) -> None:
    loan_id, phone = new_loan(), new_phone()
    await rig.system.publish_event("loan.stage.changed", loan(loan_id, phone=phone, language="en"), key=loan_id)
    notice = {
        **ref(loan_id, "cb-notice"),
        "channel": "sms",
        "due_at": "2026-11-30T10:30:00+00:00",
        "purpose": "confirm your mortgage application",
        "topics": ["identity", "loan amount"],
        "language": "en",
        "name": "Wei Zhang",
        "phone": phone,
        "message": "from an older scheduler: read tolerantly and ignored, notice.j2 writes the text",
        "caller_code": "483920",
        "self_service_url": "https://huifang.example/p/cb-notice.1999999999.sig",
    }
    event_id = await rig.system.publish_event("callback.notice.requested", notice, key=loan_id)
    await rig.system.publish_event("callback.notice.requested", notice, key=loan_id, event_id=event_id)
    # A later event on the same partition: once it is delivered, the duplicate has been consumed.
    await rig.system.publish_event("callback.notice.requested", {**notice, "callback_id": "cb-2"}, key=loan_id)

    items = await settled(rig, loan_id, 2)
    sms = rig.receiver.sms(phone)
    assert len(sms) == 2 and {n["status"] for n in items} == {"sent"}
    assert {n["channel"] for n in items} == {"sms"} and {n["recipient"] for n in items} == {"party:P-1"}
    text = sms[0].body["text"]
    assert text.startswith("Dear Wei Zhang, Huifang Demo Bank will call you around 2026-11-30 18:30")  # party's zone
    # The text names the code, the hotline and the link; the stored notifications (and their API) do not.
    assert "the code 483920" in text and "95500" in text and "https://huifang.example/p/cb-notice." in text
    assert "483920" not in str(items) and "huifang.example/p/" not in str(items)
    assert_signed(sms[0])
    assert sms[0].headers["X-Huifang-Id"] == sms[0].body["id"]

    sent = await rig.system.tap.wait_events("notification.sent", loan_id, count=2)
    assert phone not in json.dumps(sent) and "Wei Zhang" not in json.dumps(sent)
    async with rig.db().uow() as uow:
        rows = (
            await uow.session.execute(sa.text("SELECT * FROM notification WHERE loan_id = :l"), {"l": loan_id})
        ).all()
    at_rest = json.dumps([list(map(str, r)) for r in rows], ensure_ascii=False)
    assert phone not in at_rest and "Wei Zhang" not in at_rest and "18:30" not in at_rest


async def test_no_consent_party_gets_questionnaire_email_and_officer_is_flagged(rig: Rig) -> None:
    loan_id, address = new_loan(), f"zhang-{uuid.uuid4().hex[:6]}@example.com"
    rig.mailbox.refuse[address] = ["451 4.3.0 mailbox busy, try later"]
    stage = loan(loan_id, phone=new_phone(), email_=address)
    stage_id = await rig.system.publish_event("loan.stage.changed", stage, key=loan_id)
    # The party's channel is chosen from the contacts they had (another topic): have them first.
    await wait_for(lambda: processed(rig, stage_id), 30, "the stage event handled")
    scheduled = {
        **ref(loan_id, "cb-q1"),
        "due_at": "2026-11-30T10:30:00+00:00",
        "deadline": "2026-12-05T10:30:00+00:00",
        "notice_at": "2026-11-29T10:30:00+00:00",
        "verification_items": ["identity"],
        "channel": "questionnaire",
        "flags": ["no_contact_consent"],
    }
    await rig.system.publish_event("callback.scheduled", scheduled, key=loan_id)

    items = await settled(rig, loan_id, 3)
    by = {(n["recipient"], n["channel"]): n for n in items}
    assert set(by) == {("party:P-1", "email"), ("officer:EMP-778", "webhook"), ("officer:EMP-778", "email")}
    assert by[("party:P-1", "email")]["attempts"] == 2 and rig.mailbox.refused.count(address) == 1  # 4xx retried
    [mail] = rig.mailbox.to(address)
    assert mail["Subject"] == "【贷款回访】请在线填写核实问卷"
    assert mail["Message-ID"] == f"<{by[('party:P-1', 'email')]['notification_id']}@huifang>"
    body = mail.get_content()
    assert "张伟您好" in body and f"{QUESTIONNAIRE}cb-q1" in body and "不会致电" in body
    [officer_mail] = rig.mailbox.to(f"officer-{loan_id}@bank.example")
    assert "未同意电话联系" in officer_mail["Subject"] and "张伟" in officer_mail.get_content()
    [hook] = rig.receiver.webhooks(loan_id)
    assert hook.body["type"] == "callback.scheduled" and hook.body["reason"] == "no_consent"
    assert "张伟" not in hook.raw.decode() and address not in hook.raw.decode()
    assert_signed(hook)


async def test_attempts_exhausted_before_contacts_arrive_still_reaches_party(rig: Rig) -> None:
    loan_id, phone = new_loan(), new_phone()
    expired = {**ref(loan_id, "cb-x1", "expired"), "reason": "attempts_exhausted"}
    # The expiry overtakes the loan's contacts (another topic): the SMS waits for them instead of failing.
    await rig.system.publish_event("callback.expired", expired, key=loan_id)
    await wait_for(lambda: rig.receiver.webhooks(loan_id), 30, "the officer's webhook")
    await rig.system.publish_event("loan.stage.changed", loan(loan_id, phone=phone), key=loan_id)

    await wait_for(lambda: rig.receiver.sms(phone), 30, "the questionnaire SMS")
    [sms] = rig.receiver.sms(phone)
    assert sms.body["text"].startswith("张伟您好") and f"{QUESTIONNAIRE}cb-x1" in sms.body["text"]
    items = await settled(rig, loan_id, 3)
    party_sms = next(n for n in items if n["channel"] == "sms")
    assert party_sms["status"] == "sent" and party_sms["attempts"] >= 2  # its first try found no contact
    [hook] = rig.receiver.webhooks(loan_id)
    assert hook.body["type"] == "callback.expired" and hook.body["reason"] == "attempts_exhausted"
    assert hook.body["officer_id"] is None  # contacts unknown when the expiry arrived; routed by loan_id
    # The officer's email waited for the contacts, and went out when they came.
    [officer_mail] = rig.mailbox.to(f"officer-{loan_id}@bank.example")
    assert "李娜您好" in officer_mail.get_content()
    assert {(n["recipient"], n["channel"], n["kind"]) for n in items if n["channel"] != "sms"} == {
        ("officer", "webhook", "expired"), ("officer:EMP-778", "email", "expired"),
    }  # fmt: skip


async def test_refusal_before_the_officer_is_known_emails_the_officer_once_they_are(rig: Rig) -> None:
    loan_id = new_loan()
    first = await rig.system.publish_event("callback.refused", refusal(loan_id, "time_conflict"), key=loan_id)
    await wait_for(lambda: processed(rig, first), 30, "the refusal handled")
    assert await waiting(rig, loan_id) == 1 and rig.mailbox.to(f"officer-{loan_id}@bank.example") == []
    await rig.system.publish_event("loan.stage.changed", loan(loan_id, phone=new_phone()), key=loan_id)

    items = await settled(rig, loan_id, 2)
    assert {(n["recipient"], n["channel"], n["status"]) for n in items} == {
        ("officer", "webhook", "sent"), ("officer:EMP-778", "email", "sent"),
    }  # fmt: skip
    [mail] = rig.mailbox.to(f"officer-{loan_id}@bank.example")
    assert mail["Subject"] == f"【回访拒绝】贷款 {loan_id}：借款人拒绝回访"
    assert "李娜您好" in mail.get_content() and "张伟" in mail.get_content()
    [hook] = rig.receiver.webhooks(loan_id)
    assert hook.body["officer_id"] is None  # one webhook, sent when the refusal came, routed by loan_id
    assert await waiting(rig, loan_id) == 0


async def test_each_waiting_officer_notice_emails_once_whatever_stage_events_follow(rig: Rig) -> None:
    loan_id, phone = new_loan(), new_phone()
    refusals = [
        await rig.system.publish_event("callback.refused", refusal(loan_id, "time_conflict"), key=loan_id)
        for _ in range(2)
    ]
    await wait_for(lambda: processed(rig, refusals[-1]), 30, "both refusals handled")
    assert await waiting(rig, loan_id) == 2
    stage = loan(loan_id, phone=phone)
    first = await rig.system.publish_event("loan.stage.changed", stage, key=loan_id)
    await rig.system.publish_event("loan.stage.changed", stage, key=loan_id, event_id=first)  # redelivered
    # A later stage, under another event id and with another officer: nothing is waiting any more.
    later = {**stage, "stage": "approved", "officer": {"id": "EMP-901", "email": f"new-{loan_id}@bank.example"}}
    last = await rig.system.publish_event("loan.stage.changed", later, key=loan_id)
    await wait_for(lambda: processed(rig, last), 30, "the later stage handled")

    items = await settled(rig, loan_id, 4)
    emails = [n for n in items if n["channel"] == "email"]
    assert sorted(n["source_event_id"] for n in emails) == sorted(refusals)
    assert {n["recipient"] for n in emails} == {"officer:EMP-778"} and {n["status"] for n in items} == {"sent"}
    assert len(rig.mailbox.to(f"officer-{loan_id}@bank.example")) == 2
    assert rig.mailbox.to(f"new-{loan_id}@bank.example") == [] and len(rig.receiver.webhooks(loan_id)) == 2
    assert await waiting(rig, loan_id) == 0


async def test_webhook_retries_5xx_then_delivers(rig: Rig) -> None:
    loan_id = new_loan()
    rig.receiver.scripts[loan_id] = [503, 502]
    await rig.system.publish_event("callback.refused", refusal(loan_id, "time_conflict"), key=loan_id)
    [note] = await settled(rig, loan_id, 1)
    assert note["status"] == "sent" and note["attempts"] == 3 and note["kind"] == "refusal"
    assert [r.status for r in rig.receiver.webhooks(loan_id)] == [503, 502, 200]
    assert len({r.headers["X-Huifang-Id"] for r in rig.receiver.webhooks(loan_id)}) == 1  # receivers can dedupe
    [sent] = await rig.system.tap.wait_events("notification.sent", loan_id)
    assert sent["data"]["attempts"] == 3 and sent["data"]["channel"] == "webhook"


async def test_gives_up_after_bounded_tries_and_at_once_on_4xx(rig: Rig) -> None:
    down, rejecting = new_loan(), new_loan()
    rig.receiver.scripts[down] = [503] * 50
    rig.receiver.scripts[rejecting] = [400] * 50
    await rig.system.publish_event("callback.refused", refusal(down, "other"), key=down)
    await rig.system.publish_event("callback.refused", refusal(rejecting, "other"), key=rejecting)

    [failed] = await settled(rig, down, 1)
    assert failed["status"] == "failed" and failed["attempts"] == MAX_ATTEMPTS and failed["last_error"] == "http 503"
    assert len(rig.receiver.webhooks(down)) == MAX_ATTEMPTS
    [event] = await rig.system.tap.wait_events("notification.failed", down)
    assert event["data"]["error"] == "http 503" and event["data"]["notification_id"] == failed["notification_id"]

    async with rig.system.client("notifier", "supervisor") as client:
        log = (await client.get("/v1/notifications", params={"status": "failed", "limit": 500})).json()["items"]
    assert failed["notification_id"] in {n["notification_id"] for n in log} and {n["status"] for n in log} == {"failed"}

    [bad] = await settled(rig, rejecting, 1)
    assert bad["status"] == "failed" and bad["attempts"] == 1 and bad["last_error"] == "http 400"
    assert len(rig.receiver.webhooks(rejecting)) == 1


async def escalations(rig: Rig, **params: str) -> list[dict[str, Any]]:
    async with rig.system.client("notifier", "supervisor") as client:
        response = await client.get("/v1/escalations", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def raised_at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["time"])


async def level2_after(rig: Rig, loan_id: str) -> timedelta:
    """How long the loan's escalation waited at level 1, from the stored times.

    The deadline runs from the stored raised_at; an envelope's time is stamped a little after it.
    """
    async with rig.system.client("notifier", "supervisor") as client:
        [stored] = (await client.get("/v1/escalations", params={"loan_id": loan_id})).json()["items"]
    return datetime.fromisoformat(stored["escalated_at"]) - datetime.fromisoformat(stored["raised_at"])


async def test_unacknowledged_escalation_goes_to_level_2_acknowledged_stays(rig: Rig) -> None:
    acked, ignored = new_loan(), new_loan()
    await rig.system.publish_event("callback.refused", refusal(acked, "privacy_concern"), key=acked)
    [first] = await rig.system.tap.wait_events("escalation.raised", acked)
    await rig.system.publish_event("callback.refused", refusal(ignored, "suspected_fraud"), key=ignored)
    esc_id = first["data"]["escalation_id"]
    async with rig.system.client("notifier", "supervisor") as client:
        ack = await client.post(f"/v1/escalations/{esc_id}/ack", json={"note": "calling the branch"})
    assert ack.status_code == 200 and ack.json()["state"] == "acknowledged", ack.text
    assert datetime.now(UTC) < raised_at(first) + ACK_TIMEOUT, "acknowledged too late to test the timer"

    # The ignored loan was raised after the acknowledged one, so the acknowledged one's deadline passed too.
    level1, level2 = await rig.system.tap.wait_events("escalation.raised", ignored, count=2, within=30)
    assert (level1["data"]["level"], level2["data"]["level"]) == (1, 2)
    assert level2["data"]["assignee"] == "risk_compliance" and level2["data"]["rule"] == "reason:suspected_fraud"
    assert ACK_TIMEOUT <= await level2_after(rig, ignored) < ACK_TIMEOUT + timedelta(seconds=3)
    assert [e["data"]["level"] for e in rig.system.tap.events("escalation.raised", acked)] == [1]
    await wait_for(lambda: any(r.body.get("level") == 2 for r in rig.receiver.webhooks(ignored)), 30, "level-2 hook")

    [open_one] = [e for e in await escalations(rig, state="open") if e["loan_id"] == ignored]
    assert open_one["level"] == 2 and open_one["escalated_at"] is not None
    async with rig.system.client("notifier", "supervisor") as client:
        resolved = await client.post(f"/v1/escalations/{esc_id}/resolve", json={"note": "party confirmed in branch"})
        again = await client.post(f"/v1/escalations/{esc_id}/resolve", json={"note": "x"})
        reopen = await client.post(f"/v1/escalations/{esc_id}/ack", json={"note": "x"})
    assert resolved.status_code == 200 and resolved.json()["resolve_note"] == "party confirmed in branch"
    assert again.status_code == 409 and reopen.status_code == 409
    assert esc_id in {e["escalation_id"] for e in await escalations(rig, state="resolved")}
    [ack_event] = await rig.system.tap.wait_events("escalation.acknowledged", acked)
    [res_event] = await rig.system.tap.wait_events("escalation.resolved", acked)
    assert ack_event["data"]["level"] == res_event["data"]["level"] == 1
    assert "calling the branch" not in json.dumps(ack_event) and "party confirmed" not in json.dumps(res_event)


async def test_restart_between_refusal_and_deadline_still_escalates_on_time(rig: Rig) -> None:
    loan_id = new_loan()
    await rig.system.publish_event("callback.refused", refusal(loan_id, "other", refusals=2), key=loan_id)
    [level1] = await rig.system.tap.wait_events("escalation.raised", loan_id)
    assert level1["data"]["rule"] == "refusals_per_loan"
    await rig.system.stop_service("notifier")
    await rig.system.start_service("notifier", rig.system.settings)
    assert datetime.now(UTC) < raised_at(level1) + ACK_TIMEOUT, "restart took longer than the deadline"

    _, level2 = await rig.system.tap.wait_events("escalation.raised", loan_id, count=2, within=30)
    assert level2["data"]["level"] == 2
    assert ACK_TIMEOUT <= await level2_after(rig, loan_id) < ACK_TIMEOUT + timedelta(seconds=3)


async def test_nth_refusal_escalates_even_when_its_reason_already_did(rig: Rig) -> None:
    loan = new_loan()
    await rig.system.publish_event("callback.refused", refusal(loan, "privacy_concern", refusals=1), key=loan)
    await rig.system.publish_event("callback.refused", refusal(loan, "privacy_concern", refusals=2), key=loan)
    raised = await rig.system.tap.wait_events("escalation.raised", loan, count=2)
    assert [e["data"]["rule"] for e in raised] == ["reason:privacy_concern", "refusals_per_loan"]
    await rig.system.publish_event("callback.refused", refusal(loan, "privacy_concern", refusals=3), key=loan)
    # 2 + 2 notifications for the first two refusals, 1 for the third's officer notice; a third
    # escalation would be emitted before that notice on the loan's partition.
    await rig.system.tap.wait_events("notification.sent", loan, count=5)
    assert len(rig.system.tap.events("escalation.raised", loan)) == 2  # both rules already active


async def test_deadline_expiry_tells_the_officer_but_sends_the_party_nothing(rig: Rig) -> None:
    loan_id, phone = new_loan(), new_phone()
    await rig.system.publish_event("loan.stage.changed", loan(loan_id, phone=phone), key=loan_id)
    expired = {**ref(loan_id, "cb-d1", "expired"), "reason": "deadline"}
    await rig.system.publish_event("callback.expired", expired, key=loan_id)

    await wait_for(lambda: rig.receiver.webhooks(loan_id), 30, "the officer's webhook")
    # Every notification of the event is queued in one transaction: only the officer's are there.
    notes = await notifications(rig, loan_id)
    assert notes and all(n["recipient"].startswith("officer") and n["kind"] == "expired" for n in notes)
    [hook] = rig.receiver.webhooks(loan_id)
    assert hook.body["type"] == "callback.expired" and hook.body["reason"] == "deadline"
    assert rig.receiver.sms(phone) == []


async def test_officer_without_an_address_gets_the_email_when_a_stage_event_brings_one(rig: Rig) -> None:
    loan_id = new_loan()
    stage = loan(loan_id, phone=new_phone())
    bare = {**stage, "officer": {"id": "EMP-778", "name": "李娜"}}
    bare_id = await rig.system.publish_event("loan.stage.changed", bare, key=loan_id)
    await wait_for(lambda: processed(rig, bare_id), 30, "the stage event without the officer's email")
    refused = await rig.system.publish_event("callback.refused", refusal(loan_id, "time_conflict"), key=loan_id)
    await wait_for(lambda: processed(rig, refused), 30, "the refusal handled")
    assert await waiting(rig, loan_id) == 1
    await rig.system.publish_event("loan.stage.changed", {**stage, "stage": "approved"}, key=loan_id)

    items = await settled(rig, loan_id, 2)
    assert {(n["recipient"], n["channel"]) for n in items} == {
        ("officer:EMP-778", "webhook"), ("officer:EMP-778", "email"),
    }  # fmt: skip
    assert len(rig.mailbox.to(f"officer-{loan_id}@bank.example")) == 1 and await waiting(rig, loan_id) == 0


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def test_dev_receiver_prints_webhooks_but_never_an_sms_body(capfd: pytest.CaptureFixture[str]) -> None:
    """`huifang dev`'s receiver, fed by the notifier's own channels: an SMS holds the party's name."""
    port = free_port()
    settings = Settings(
        huifang_notify_webhook_url=f"http://127.0.0.1:{port}/hooks",
        huifang_webhook_secret=WEBHOOK_SECRET,  # type: ignore[arg-type]
    )
    receiver = asyncio.create_task(_sink(settings))  # what `huifang dev` runs on 8009
    try:
        await wait_for(lambda: _listening(port), 10, "the development receiver")
        name, phone = "张伟", new_phone()
        async with httpx.AsyncClient(timeout=10) as client:
            sms = await send_sms(
                client=client, url=f"http://127.0.0.1:{port}/sms", secret=WEBHOOK_SECRET,
                notification_id=str(uuid.uuid4()), to=phone, text=f"{name}您好，银行将致电核实您的贷款信息。",
            )  # fmt: skip
            hook = await deliver(
                client, f"http://127.0.0.1:{port}/hooks", WEBHOOK_SECRET, str(uuid.uuid4()),
                {"type": "callback.refused", "loan_id": "L-dev-receiver"},
            )  # fmt: skip
            forged = await deliver(
                client, f"http://127.0.0.1:{port}/hooks", "not-the-secret", str(uuid.uuid4()),
                {"type": "callback.refused", "loan_id": "L-forged"},
            )  # fmt: skip
    finally:
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)

    assert sms.ok and hook.ok and forged.ok  # acknowledged, so the notifier does not retry
    printed = capfd.readouterr().err
    [sms_line] = [line for line in printed.splitlines() if line.startswith("[/sms ")]
    assert "not shown" in sms_line
    assert name not in printed and phone not in printed and "您好" not in printed
    assert '[/hooks signature ok] {"type":"callback.refused","loan_id":"L-dev-receiver"}' in printed
    assert '[/hooks BAD SIGNATURE] {"type":"callback.refused","loan_id":"L-forged"}' in printed
