"""One label table for every name a person reads: complete, shared by notifier and dashboard, used by notices."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest

from services.notifier.messages import compose, render
from services.outcomes.dashboard.board import Board
from services.outcomes.stats import Counts, Group, Period, RefusalStats
from services.scheduler.models import Callback
from services.scheduler.notices import Notices
from shared import labels
from shared.crypto import Cipher, generate_key
from shared.events import CallbackExpired, CallbackNoticeRequested, CallbackRef, CallbackRefused, LoanStageChanged

CJK = re.compile(r"[\u4e00-\u9fff]")


def vocabulary(model: type[Any], field: str) -> set[str]:
    """The codes a contract event allows in one field (its Literal)."""
    return set(get_args(model.model_fields[field].annotation))


# Each table against the vocabulary of the contract's events, so a new code without a label fails here.
TABLES: list[tuple[str, Mapping[Any, labels.Label], set[str]]] = [
    ("roles", labels.ROLES, vocabulary(CallbackRef, "role")),
    ("stages", labels.STAGES, vocabulary(LoanStageChanged, "stage")),
    ("purposes", labels.PURPOSES, vocabulary(LoanStageChanged, "stage")),
    ("items", labels.VERIFICATION_ITEM_NAMES, set(get_args(labels.VerificationItem))),
    ("reasons", labels.REASONS, vocabulary(CallbackRefused, "reason_code")),
    ("expiry_reasons", labels.EXPIRY_REASONS, vocabulary(CallbackExpired, "reason")),
]


@pytest.mark.parametrize(("table", "names", "codes"), TABLES, ids=[t[0] for t in TABLES])
def test_every_contract_code_has_a_label_in_both_languages(
    table: str, names: Mapping[str, labels.Label], codes: set[str]
) -> None:
    assert codes and set(names) == codes
    for code in codes:
        zh, en = names[code]["zh-CN"], names[code]["en"]
        assert CJK.search(zh), f"{table}.{code}: zh-CN label is not Chinese"
        assert en.strip() and en.isascii(), f"{table}.{code}: en label is not English"
        # What templates read is the same table, by the same name.
        assert labels.names("zh-CN")[table][code] == zh and labels.names("en-GB")[table][code] == en


def test_verification_items_are_the_labelled_ones() -> None:
    assert list(labels.VERIFICATION_ITEMS) == list(get_args(labels.VerificationItem))


def test_a_code_without_a_label_is_an_error_not_a_raw_code() -> None:
    with pytest.raises(KeyError):
        labels.purpose(stage="no_such_stage", language="en")


def empty_period() -> Period:
    return Period(from_=NOW, to=NOW, totals=Counts(closed=0, completed=0, refused=0, refusal_rate=None), groups=[])


NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


def dashboard_reason_labels(codes: list[str]) -> list[str]:
    """The reason chart's labels, as the dashboard page gets them."""
    groups = [Group(key=c, closed=1, completed=None, refused=1, refusal_rate=None) for c in codes]
    totals = Counts(closed=len(codes), completed=0, refused=len(codes), refusal_rate=None)
    stats = RefusalStats(
        group_by="reason", timezone="Asia/Shanghai", branch_id=None, from_=NOW - timedelta(hours=1), to=NOW,
        totals=totals, groups=groups, compare=None, change=None,
    )  # fmt: skip
    board = Board(
        window="1h", start=NOW - timedelta(hours=1), end=NOW, stats=stats, trend=empty_period(),
        branches=empty_period(), agents=empty_period(), open_by_state={}, overdue_count=0, overdue=[],
        escalations=[], escalation_count=0, level2_count=0,
    )  # fmt: skip
    result: list[str] = board.charts("Asia/Shanghai")["reasons"]["labels"]
    return result


def officer_reason(language: str, code: str) -> str:
    """The reason as the notifier's refusal email to the officer names it."""
    context = {"loan_id": "L-1", "callback_id": "cb-1", "role": "borrower", "name": "N", "party_name": "P"}
    body = render(
        kind="refusal", channel="email", language=language,
        context={**context, "reason_code": code, "refusals_for_loan": 1},
    ).body  # fmt: skip
    match = re.search(r"^(?:Reason: |原因：)(.+)$", body, re.MULTILINE)
    assert match, body
    return match.group(1)


def test_dashboard_and_officer_email_name_a_reason_alike() -> None:
    codes = sorted(labels.REASONS)
    shown = dashboard_reason_labels(codes)
    for code, label in zip(codes, shown, strict=True):
        assert label == f"{officer_reason('en', code)} / {officer_reason('zh-CN', code)}"


@pytest.mark.parametrize("language", ["zh-CN", "en"])
@pytest.mark.parametrize("reason", sorted(labels.EXPIRY_REASONS))
@pytest.mark.parametrize("role", sorted(labels.ROLES))
def test_officer_reads_role_and_expiry_reason_from_the_table(language: str, reason: str, role: str) -> None:
    context = {"loan_id": "L-1", "callback_id": "cb-1", "role": role, "reason": reason, "name": "N", "party_name": "P"}
    message = render(kind="expired", channel="email", language=language, context={**context, "url": "u"})
    assert labels.ROLES[role][language] in message.subject
    assert labels.EXPIRY_REASONS[reason][language] in message.body


def callback(language: str) -> tuple[Callback, Cipher]:
    cipher = Cipher([generate_key()])
    contact = {"name": "Anna Lee" if language == "en" else "张伟", "phone": "+8613800138000"}
    due = datetime(2026, 11, 30, 2, 30, tzinfo=UTC)
    cb = Callback(
        callback_id="cb-1", loan_id="L-1", stage="final_check", branch_id="BR-1", party_id="P-1", role="borrower",
        state="scheduled", contact_enc=cipher.encrypt_json(contact), phone_index="x", timezone="Asia/Shanghai",
        language=language, due_at=due, deadline=due + timedelta(days=5), notice_at=due - timedelta(hours=24),
    )  # fmt: skip
    return cb, cipher


@pytest.mark.parametrize(("language", "written"), [("zh-CN", "zh-CN"), ("en-US", "en")])
def test_notice_event_carries_data_and_the_notifier_writes_the_sms(language: str, written: str) -> None:
    cb, cipher = callback(language)
    notice = Notices(cipher=cipher).notice(cb)
    payload = notice.model_dump(mode="json")
    assert "message" not in payload and "message" not in CallbackNoticeRequested.model_fields
    # CONTRACT.md 2.3: purpose and topics in the party's language, from the label table.
    assert payload["purpose"] == labels.PURPOSES["final_check"][written]
    assert payload["topics"] == [labels.VERIFICATION_ITEM_NAMES[i][written] for i in labels.VERIFICATION_ITEMS]

    party = {"party_id": "P-1", "name": payload["name"], "phone": payload["phone"], "language": language}
    sms = compose(kind="notice", channel="sms", recipient="party:P-1", payload=payload, contacts={"parties": [party]})
    assert sms is not None and sms.address == "+8613800138000"
    assert payload["purpose"] in sms.message.body and "2026-11-30 10:30" in sms.message.body  # local time
    assert sms.message.body.count("\n") == 0  # one SMS line
