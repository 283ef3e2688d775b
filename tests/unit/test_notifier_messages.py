"""Notifier rules without I/O: templates by language, addressing, SMTP classification, retry backoff."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.notifier.app import create_app as notifier_app
from services.notifier.channels.email import build_message, classify_smtp
from services.notifier.delivery import Retry
from services.notifier.messages import check_variants, compose, render
from services.notifier.notifications import questionnaire_url
from services.notifier.outbound import Outbound, Route, officer_routes, party_route
from shared.crypto import Cipher, generate_key
from shared.policy import Escalation, Policy, PolicyError
from shared.settings import Settings

CONTACTS: dict[str, Any] = {
    "officer": {"id": "EMP-778", "name": "李娜", "email": "li.na@bank.example"},
    "parties": [
        {"party_id": "P-1", "role": "borrower", "name": "张伟", "phone": "+8613800138000", "language": "zh-CN"},
        {
            "party_id": "P-2",
            "role": "guarantor",
            "name": "Anna Lee",
            "phone": "+85291234567",
            "email": "anna@example.com",
            "language": "en",
            "timezone": "Asia/Hong_Kong",
        },
    ],
}
REFUSAL = {"loan_id": "L-1", "callback_id": "cb-1", "party_id": "P-2", "role": "guarantor"}


def test_party_reads_their_own_language() -> None:
    payload = {"party_id": "P-2", "url": "https://q/cb-1", "reason": "attempts_exhausted"}
    english = compose(kind="questionnaire", channel="email", recipient="party:P-2", payload=payload, contacts=CONTACTS)
    chinese = compose(
        kind="questionnaire",
        channel="sms",
        recipient="party:P-1",
        payload={**payload, "party_id": "P-1"},
        contacts=CONTACTS,
    )
    assert english is not None and chinese is not None
    assert english.address == "anna@example.com" and english.message.body.startswith("Dear Anna Lee,")
    assert english.message.subject == "Please complete your loan verification questionnaire"
    assert chinese.address == "+8613800138000" and chinese.message.body.startswith("张伟您好")
    assert "https://q/cb-1" in chinese.message.body and chinese.message.body.count("\n") == 0  # one SMS line


def test_officer_reads_chinese_about_the_party_in_question() -> None:
    payload = {**REFUSAL, "reason_code": "privacy_concern", "refusals_for_loan": 2}
    composed = compose(kind="refusal", channel="email", recipient="officer:EMP-778", payload=payload, contacts=CONTACTS)
    assert composed is not None and composed.address == "li.na@bank.example"
    assert composed.message.subject == "【回访拒绝】贷款 L-1：担保人拒绝回访"
    assert "担保人Anna Lee拒绝了核实回访" in composed.message.body and "担心个人信息泄露" in composed.message.body


def test_notice_time_is_local_to_the_party() -> None:
    payload = {"party_id": "P-2", "due_at": "2026-11-30T02:00:00+00:00", "purpose": "p", "topics": ["a", "b"]}
    composed = compose(kind="notice", channel="sms", recipient="party:P-2", payload=payload, contacts=CONTACTS)
    assert composed is not None and "around 2026-11-30 10:00" in composed.message.body


@pytest.mark.parametrize(("recipient", "code_line"), [("party:P-1", "核验码483920"), ("party:P-2", "the code 483920")])
@pytest.mark.parametrize("channel", ["sms", "email"])
def test_notice_names_the_bank_the_hotline_the_code_and_the_link(recipient: str, code_line: str, channel: str) -> None:
    payload = {
        "party_id": recipient.split(":")[1], "due_at": "2026-11-30T02:00:00+00:00", "purpose": "p", "topics": ["a"],
        "bank": "Huifang Demo Bank", "hotline": "95500", "caller_code": "483920", "url": "https://h.example/p/t.1.s",
    }  # fmt: skip
    contacts = {"parties": [{**p, "email": "x@example.com"} for p in CONTACTS["parties"]]}
    composed = compose(kind="notice", channel=channel, recipient=recipient, payload=payload, contacts=contacts)
    assert composed is not None
    text = composed.message.body.replace(" ", "") if "核验码" in code_line else composed.message.body
    for part in ("Huifang", "95500", code_line.replace(" ", "") if "核验码" in code_line else code_line):
        assert part in text
    assert "https://h.example/p/t.1.s" in composed.message.body
    if channel == "sms":
        assert composed.message.body.count("\n") == 0


@pytest.mark.parametrize(("recipient", "why"), [("party:P-1", "为什么要回访"), ("party:P-2", "Why we call")])
@pytest.mark.parametrize("channel", ["sms", "email"])
def test_an_arms_message_variant_adds_its_text_to_the_notice(recipient: str, why: str, channel: str) -> None:
    payload = {"party_id": recipient.split(":")[1], "due_at": "2026-11-30T02:00:00+00:00", "purpose": "p", "topics": []}
    contacts = {"parties": [{**p, "email": "x@example.com"} for p in CONTACTS["parties"]]}

    def body(**extra: Any) -> str:
        composed = compose(
            kind="notice", channel=channel, recipient=recipient, payload={**payload, **extra}, contacts=contacts
        )
        assert composed is not None
        return composed.message.body

    plain, explained = body(), body(variant="explained")
    assert why not in plain and why in explained
    assert explained.startswith(plain.split("\n")[0][:20])  # the same notice, with the variant's paragraph added
    assert channel == "email" or explained.count("\n") == 0


def _with_variant(message: str) -> Policy:
    arms = [{"name": "control", "weight": 1}, {"name": "explained", "weight": 1, "message": message}]
    return Policy.model_validate({"experiments": [{"name": "why", "arms": arms}]})


def test_a_known_variant_passes_the_start_check() -> None:
    check_variants(_with_variant("explained"))
    check_variants(Policy())


def test_an_unknown_variant_stops_the_start_naming_the_key() -> None:
    with pytest.raises(PolicyError, match=r"experiments\.0\.arms\.1\.message.*'nosuch'.*en/notice\.nosuch\.j2"):
        check_variants(_with_variant("nosuch"))


def test_the_notifier_does_not_start_with_an_unknown_variant(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[[experiments]]\nname = "why"\narms = [{name = "a", weight = 1, message = "nosuch"}]\n', encoding="utf-8"
    )
    with pytest.raises(PolicyError, match=r"experiments\.0\.arms\.0\.message"):
        notifier_app(Settings(huifang_policy_file=policy))


def test_a_variant_name_that_is_no_file_name_does_not_validate() -> None:
    with pytest.raises(ValidationError, match="message"):
        _with_variant("../en/notice")


def test_unknown_recipient_or_missing_address_waits() -> None:
    payload = {"party_id": "P-1", "url": "u", "reason": "deadline"}
    assert (
        compose(kind="questionnaire", channel="sms", recipient="party:P-9", payload=payload, contacts=CONTACTS) is None
    )
    assert (
        compose(kind="questionnaire", channel="email", recipient="party:P-1", payload=payload, contacts=CONTACTS)
        is None
    )
    assert compose(kind="questionnaire", channel="sms", recipient="party:P-1", payload=payload, contacts={}) is None
    assert (
        compose(kind="refusal", channel="email", recipient="officer:EMP-1", payload=REFUSAL, contacts=CONTACTS) is None
    )


def test_unsupported_language_falls_back_to_chinese() -> None:
    message = render(
        kind="questionnaire", channel="sms", language="fr", context={"name": "X", "url": "u", "reason": "x"}
    )
    assert message.body.startswith("X您好")


@pytest.mark.parametrize(("code", "outcome"), [(421, "retryable"), (451, "retryable"), (550, "permanent")])
def test_smtp_4xx_is_transient_5xx_permanent(code: int, outcome: str) -> None:
    result = classify_smtp(code)
    assert result.outcome == outcome and result.error == f"smtp {code}"


def test_email_carries_a_stable_message_id() -> None:
    message = build_message(sender="a@b", to="c@d", subject="主题", body="正文", notification_id="n-1")
    assert message["Message-ID"] == "<n-1@huifang>" and message["Subject"] == "主题"


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    retry = Retry(max_attempts=8, base_seconds=2.0, cap_seconds=60.0)
    for attempts, middle in [(1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)]:
        pauses = {retry.backoff(attempts) for _ in range(50)}
        assert all(timedelta(seconds=middle * 0.5) <= p <= timedelta(seconds=middle * 1.5) for p in pauses)
        assert len(pauses) > 1  # jittered


def test_questionnaire_url_names_the_callback() -> None:
    policy = Policy(escalation=Escalation(questionnaire_url="https://bank.example/q/{callback_id}?src=sms"))
    assert questionnaire_url(policy, "cb/1") == "https://bank.example/q/cb%2F1?src=sms"


def test_without_a_bank_questionnaire_the_party_is_given_the_hotline() -> None:
    assert questionnaire_url(Policy(), "cb-1") is None  # questionnaire_url = "" leaves it to the party's page
    payload = {"party_id": "P-1", "url": None, "reason": "no_consent", "bank": "Huifang Demo Bank", "hotline": "95500"}
    said = {"party:P-1": "官方客服热线95500", "party:P-2": "official hotline of Huifang Demo Bank"}
    for recipient, words in said.items():
        payload["party_id"] = recipient.split(":")[1]
        sms = compose(kind="questionnaire", channel="sms", recipient=recipient, payload=payload, contacts=CONTACTS)
        assert sms is not None and words in sms.message.body and "None" not in sms.message.body


def test_officer_gets_email_only_when_smtp_is_set_and_an_address_is_known() -> None:
    cipher = Cipher([generate_key()])
    with_email, without = Outbound(cipher=cipher, email_enabled=True), Outbound(cipher=cipher, email_enabled=False)
    assert officer_routes(out=with_email, contacts=CONTACTS) == [
        Route("officer:EMP-778", "webhook"),
        Route("officer:EMP-778", "email"),
    ]
    assert officer_routes(out=without, contacts=CONTACTS) == [Route("officer:EMP-778", "webhook")]
    assert officer_routes(out=with_email, contacts=None) == [Route("officer", "webhook")]


def test_party_gets_email_when_preferred_and_possible_else_sms() -> None:
    out = Outbound(cipher=Cipher([generate_key()]), email_enabled=True)
    assert party_route(out=out, contacts=CONTACTS, party_id="P-2", prefer_email=True) == Route("party:P-2", "email")
    assert party_route(out=out, contacts=CONTACTS, party_id="P-2", prefer_email=False) == Route("party:P-2", "sms")
    assert party_route(out=out, contacts=CONTACTS, party_id="P-1", prefer_email=True) == Route("party:P-1", "sms")
    assert party_route(out=out, contacts=None, party_id="P-1", prefer_email=True) == Route("party:P-1", "sms")
