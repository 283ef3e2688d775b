"""Events (CONTRACT.md section 2): topics, the CloudEvents envelope, and the four kinds of poison message."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from shared.events import (
    EVENT_TYPES,
    CallbackRefused,
    InvalidEvent,
    LoanStageChanged,
    LoanVerificationCompleted,
    Party,
    PartyResult,
    encode,
    json_schemas,
    message_language,
    new_envelope,
    parse_event,
)

# CONTRACT.md 2.1, copied by hand: the table is the interface.
CONTRACT_TOPIC_OF_TYPE = {
    "loan.stage.changed": "loan.stage.v1",
    "callback.scheduled": "callback.lifecycle.v1",
    "callback.notice.requested": "callback.lifecycle.v1",
    "callback.due": "callback.lifecycle.v1",
    "callback.rescheduled": "callback.lifecycle.v1",
    "callback.cancelled": "callback.lifecycle.v1",
    "callback.expired": "callback.lifecycle.v1",
    "callback.outcome.recorded": "callback.outcome.v1",
    "callback.refused": "callback.refused.v1",
    "loan.verification.completed": "loan.verification.v1",
    "notification.sent": "notification.v1",
    "notification.failed": "notification.v1",
    "escalation.raised": "notification.v1",
    "escalation.acknowledged": "notification.v1",
    "escalation.resolved": "notification.v1",
}

NAME = "张伟"
PHONE = "+8613800138000"
EMAIL = "zhang.wei@example.com"

# CONTRACT.md 2.2, verbatim.
STAGE_DATA: dict[str, Any] = {
    "loan_id": "L-2026-000123",
    "stage": "final_check",
    "previous_stage": "initial_review_passed",
    "branch_id": "BR-SH-001",
    "product": "first_home_mortgage",
    "amount": "1250000.00",
    "currency": "CNY",
    "officer": {"id": "EMP-778", "name": "李娜", "email": "li.na@bank.example", "phone": "+8613900139000"},
    "parties": [
        {
            "party_id": "P-1",
            "role": "borrower",
            "name": NAME,
            "phone": PHONE,
            "email": EMAIL,
            "timezone": "Asia/Shanghai",
            "language": "zh-CN",
            "preferred_window": {"start": "18:00", "end": "20:30"},
            "contact_consent": True,
        }
    ],
}


def cloudevent(data: Any, *, type_: str = "loan.stage.changed", **overrides: Any) -> dict[str, Any]:
    event = {
        "specversion": "1.0",
        "id": "7f0c7a0e-6f0d-4a47-9a57-2d1c8c1f2b11",
        "source": "/los/branch/BR-SH-001",
        "type": type_,
        "time": "2026-11-28T09:15:00+08:00",
        "subject": "L-2026-000123",
        "datacontenttype": "application/json",
        "data": data,
    }
    event.update(overrides)
    return event


def raw(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def stage_data(**party: Any) -> dict[str, Any]:
    data = copy.deepcopy(STAGE_DATA)
    data["parties"][0].update(party)
    return data


def reason_of(value: bytes | None, **kwargs: Any) -> str:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(value, **kwargs)
    return str(caught.value)


# --- topics ------------------------------------------------------------------------------------


def test_event_types_are_those_of_the_contract() -> None:
    assert set(EVENT_TYPES) == set(CONTRACT_TOPIC_OF_TYPE)


@pytest.mark.parametrize("event_type", sorted(CONTRACT_TOPIC_OF_TYPE))
def test_every_model_declares_its_contract_topic(event_type: str) -> None:
    assert EVENT_TYPES[event_type].topic == CONTRACT_TOPIC_OF_TYPE[event_type]


def test_only_the_contract_personal_events_are_marked_personal() -> None:
    """CONTRACT.md 2.3: the outbox encrypts exactly these two at rest."""
    personal = {name for name, model in EVENT_TYPES.items() if model.personal}
    assert personal == {"callback.due", "callback.notice.requested"}


@pytest.mark.parametrize(
    "event_type",
    sorted(set(EVENT_TYPES) - {"loan.stage.changed", "callback.due", "callback.notice.requested"}),
)
def test_emitted_events_carry_no_personal_data(event_type: str) -> None:
    """CONTRACT.md 2.3: name, phone and email appear only in callback.due and callback.notice.requested."""
    fields = set(EVENT_TYPES[event_type].model_fields)
    assert fields.isdisjoint({"name", "phone", "email", "notes"})


# --- a valid loan.stage.changed -----------------------------------------------------------------


def test_contract_example_parses() -> None:
    event = parse_event(raw(cloudevent(STAGE_DATA)))
    assert event.type == "loan.stage.changed"
    assert event.id == "7f0c7a0e-6f0d-4a47-9a57-2d1c8c1f2b11"
    assert isinstance(event.data, LoanStageChanged)
    assert event.data.loan_id == "L-2026-000123"
    assert event.data.amount == Decimal("1250000.00")
    assert event.data.parties[0].name == NAME
    assert event.data.parties[0].preferred_window is not None
    assert event.data.parties[0].preferred_window.end == "20:30"


def test_party_defaults_are_filled() -> None:
    data = stage_data()
    for optional in ("timezone", "language", "contact_consent", "email", "preferred_window"):
        del data["parties"][0][optional]
    party = parse_event(raw(cloudevent(data))).data.parties[0]  # type: ignore[attr-defined]
    assert party.timezone == "Asia/Shanghai"
    assert party.language == "zh-CN"
    assert party.contact_consent is True
    assert party.email is None
    assert party.preferred_window is None


def test_contact_consent_false_is_kept() -> None:
    party = parse_event(raw(cloudevent(stage_data(contact_consent=False)))).data.parties[0]  # type: ignore[attr-defined]
    assert party.contact_consent is False


def test_unknown_upstream_fields_are_ignored() -> None:
    data = stage_data(nickname="小张")
    data["channel"] = "mobile-app"
    assert parse_event(raw(cloudevent(data))).data.loan_id == "L-2026-000123"  # type: ignore[attr-defined]


# --- the four kinds of poison message -----------------------------------------------------------


def test_not_json() -> None:
    assert "not valid JSON" in reason_of(b"{nope")


def test_not_utf8() -> None:
    assert "not valid JSON" in reason_of("张伟".encode("gbk"))


def test_tombstone() -> None:
    assert "empty" in reason_of(None)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({k: v for k, v in cloudevent(STAGE_DATA).items() if k != "specversion"}, id="no-specversion"),
        pytest.param(cloudevent(STAGE_DATA, specversion="0.3"), id="old-specversion"),
        pytest.param({k: v for k, v in cloudevent(STAGE_DATA).items() if k != "id"}, id="no-id"),
        pytest.param(cloudevent(STAGE_DATA, time="2026-11-28T09:15:00"), id="time-without-offset"),
        pytest.param([cloudevent(STAGE_DATA)], id="json-array"),
        pytest.param("loan.stage.changed", id="json-string"),
    ],
)
def test_not_a_cloudevent(value: Any) -> None:
    assert "not a CloudEvent" in reason_of(raw(value))


def test_unknown_type() -> None:
    reason = reason_of(raw(cloudevent(STAGE_DATA, type_="loan.stage.exploded")))
    assert reason == "unknown event type"  # the type is upstream input: never echoed


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(stage_data(role="boss"), id="bad-role"),
        pytest.param(stage_data(timezone="Mars/Base"), id="bad-timezone"),
        pytest.param(stage_data(preferred_window={"start": "25:00", "end": "26:00"}), id="bad-window"),
        pytest.param({**STAGE_DATA, "stage": "almost_done"}, id="bad-stage"),
        pytest.param({k: v for k, v in STAGE_DATA.items() if k != "officer"}, id="no-officer"),
        pytest.param(None, id="no-data"),
    ],
)
def test_invalid_data(data: Any) -> None:
    assert "invalid data for loan.stage.changed" in reason_of(raw(cloudevent(data)))


def test_invalid_data_reason_names_the_field() -> None:
    reason = reason_of(raw(cloudevent(stage_data(timezone="Mars/Base"))))
    assert "parties.0.timezone" in reason


@pytest.mark.parametrize(
    "party",
    [
        pytest.param({"role": "boss"}, id="bad-role"),
        pytest.param({"timezone": "Mars/Base"}, id="bad-timezone"),
        pytest.param({"language": NAME}, id="name-in-wrong-field"),
        pytest.param({"contact_consent": PHONE}, id="phone-in-wrong-field"),
        pytest.param({"preferred_window": EMAIL}, id="email-in-wrong-field"),
        pytest.param({"timezone": PHONE}, id="phone-in-timezone"),
        pytest.param({"timezone": NAME}, id="name-in-timezone"),
        pytest.param({"phone": PHONE + NAME}, id="bad-phone"),
        pytest.param({"email": f"{EMAIL}, {NAME}@spy.example"}, id="bad-email"),
        pytest.param({"party_id": PHONE + " " + NAME}, id="bad-id"),
        pytest.param({"name": NAME * 51}, id="long-name"),
        pytest.param({"role": {PHONE: NAME}}, id="personal-dict-key"),
    ],
)
def test_reason_does_not_contain_personal_data(party: dict[str, Any]) -> None:
    reason = reason_of(raw(cloudevent(stage_data(**party))))
    for personal in (NAME, PHONE, EMAIL, "李娜", "+8613900139000", "li.na@bank.example"):
        assert personal not in reason


def test_a_phone_in_type_is_not_echoed() -> None:
    reason = reason_of(raw(cloudevent(STAGE_DATA, type_=PHONE)))
    assert PHONE not in reason and reason == "unknown event type"


def test_not_a_cloudevent_reason_does_not_contain_personal_data() -> None:
    value = {"name": NAME, "phone": PHONE, "specversion": PHONE, "id": NAME}
    reason = reason_of(raw(value))
    assert NAME not in reason
    assert PHONE not in reason


@pytest.mark.parametrize(
    "value",
    [
        b"{nope",
        raw([cloudevent(STAGE_DATA)]),
        raw(cloudevent(STAGE_DATA, type_="loan.stage.exploded")),
        raw(cloudevent(stage_data(role="boss"))),
    ],
    ids=["not-json", "not-cloudevent", "unknown-type", "invalid-data"],
)
def test_poison_is_an_invalid_event_and_a_value_error(value: bytes) -> None:
    with pytest.raises(ValueError):
        parse_event(value)


def test_poison_kinds_have_distinct_reasons() -> None:
    reasons = [
        reason_of(b"{nope"),
        reason_of(raw([cloudevent(STAGE_DATA)])),
        reason_of(raw(cloudevent(STAGE_DATA, type_="loan.stage.exploded"))),
        reason_of(raw(cloudevent(stage_data(role="boss")))),
    ]
    prefixes = [r.split(":")[0] for r in reasons]
    assert len(set(prefixes)) == 4


# --- accepted= ---------------------------------------------------------------------------------


def test_accepted_admits_listed_type() -> None:
    event = parse_event(raw(cloudevent(STAGE_DATA)), accepted=frozenset({"loan.stage.changed"}))
    assert event.type == "loan.stage.changed"


def test_accepted_refuses_other_known_type() -> None:
    reason = reason_of(raw(cloudevent(STAGE_DATA)), accepted=frozenset({"callback.due", "callback.expired"}))
    assert "loan.stage.changed" in reason


# --- new_envelope + encode ----------------------------------------------------------------------

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
REF = {
    "loan_id": "L-2026-000123",
    "callback_id": "CB-1",
    "party_id": "P-1",
    "role": "borrower",
    "stage": "final_check",
    "branch_id": "BR-SH-001",
    "attempt": 2,
}

EMITTED: list[BaseModel] = [
    CallbackRefused(
        **REF, state="refused", reason_code="privacy_concern", agent_id="A-9", refusals_for_loan=1, occurred_at=NOW
    ),
    LoanVerificationCompleted(
        loan_id="L-2026-000123",
        stage="final_check",
        branch_id="BR-SH-001",
        status="refused",
        parties=[
            PartyResult(party_id="P-1", role="borrower", callback_id="CB-1", disposition="refused", state="refused")
        ],
        completed_at=NOW + timedelta(hours=8),
    ),
    LoanStageChanged.model_validate(STAGE_DATA),
]


@pytest.mark.parametrize("data", EMITTED, ids=lambda d: type(d).__name__)
def test_envelope_round_trips(data: BaseModel) -> None:
    envelope = new_envelope(data, source="/huifang/outcomes", subject="L-2026-000123")
    event = parse_event(encode(envelope))
    assert event.data == data
    assert type(event.data) is type(data)
    assert event.id == envelope.id


def test_envelope_is_structured_cloudevent() -> None:
    data = EMITTED[0]
    envelope = new_envelope(data, source="/huifang/outcomes", subject="L-2026-000123")
    obj = json.loads(encode(envelope))
    assert obj["specversion"] == "1.0"
    assert obj["type"] == "callback.refused"
    assert obj["source"] == "/huifang/outcomes"
    assert obj["subject"] == "L-2026-000123"
    assert obj["datacontenttype"] == "application/json"
    assert datetime.fromisoformat(obj["time"]).utcoffset() is not None
    assert obj["data"]["reason_code"] == "privacy_concern"


def test_envelope_ids_are_unique_unless_given() -> None:
    data = EMITTED[0]
    first = new_envelope(data, source="/s", subject="L")
    second = new_envelope(data, source="/s", subject="L")
    assert first.id != second.id
    assert new_envelope(data, source="/s", subject="L", event_id="fixed-1").id == "fixed-1"


# --- schemas ------------------------------------------------------------------------------------


def test_json_schemas_cover_every_type() -> None:
    schemas = json_schemas()
    assert set(schemas) == set(EVENT_TYPES)
    for schema in schemas.values():
        assert schema["type"] == "object"
        assert schema["properties"]


# --- field rules (CONTRACT.md 2.2) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "stored"),
    [("+8613800138000", "+8613800138000"), ("+86 138 0013 8000", "+8613800138000"), ("+86-138-0013-8000", PHONE)],
)
def test_a_phone_is_e164_once_spaces_and_dashes_are_removed(written: str, stored: str) -> None:
    assert Party.model_validate({**STAGE_DATA["parties"][0], "phone": written}).phone == stored


@pytest.mark.parametrize(
    ("field", "party", "officer"),
    [
        pytest.param("parties.0.phone", {"phone": "13800138000"}, {}, id="phone-without-country"),
        pytest.param("parties.0.phone", {"phone": "+86(138)00138000"}, {}, id="phone-with-brackets"),
        pytest.param("parties.0.phone", {"phone": "+8613800138000123456"}, {}, id="phone-too-long"),
        pytest.param("parties.0.email", {"email": "a@x.example, spy@y.example"}, {}, id="two-emails"),
        pytest.param("parties.0.email", {"email": "a@x.example;spy@y.example"}, {}, id="two-emails-semicolon"),
        pytest.param("parties.0.email", {"email": "张伟 <a@x.example>"}, {}, id="display-name"),
        pytest.param("parties.0.email", {"email": "not-an-address"}, {}, id="no-at"),
        pytest.param("parties.0.name", {"name": "张" * 101}, {}, id="name-over-100"),
        pytest.param("parties.0.party_id", {"party_id": "P 1"}, {}, id="party-id-space"),
        pytest.param("parties.0.party_id", {"party_id": "P" * 65}, {}, id="party-id-over-64"),
        pytest.param("officer.id", {}, {"id": "EMP/778"}, id="officer-id-slash"),
        pytest.param("officer.email", {}, {"email": "a@x.example,b@y.example"}, id="officer-two-emails"),
        pytest.param("officer.phone", {}, {"phone": "call me"}, id="officer-bad-phone"),
        pytest.param("officer.name", {}, {"name": "李" * 101}, id="officer-name-over-100"),
    ],
)
def test_a_field_rule_broken_names_the_field(field: str, party: dict[str, Any], officer: dict[str, Any]) -> None:
    data = stage_data(**party)
    data["officer"].update(officer)
    reason = reason_of(raw(cloudevent(data)))
    assert reason.startswith("invalid data for loan.stage.changed") and field in reason
    for value in [*party.values(), *officer.values()]:
        assert value not in reason


@pytest.mark.parametrize("field", ["loan_id", "branch_id"])
@pytest.mark.parametrize("value", ["", "L" * 65, "L-1/2", "L-1 2", "贷款-1"])
def test_loan_and_branch_ids_follow_the_id_rule(field: str, value: str) -> None:
    reason = reason_of(raw(cloudevent({**STAGE_DATA, field: value})))
    assert reason.startswith(f"invalid data for loan.stage.changed: {field}: ")
    assert not value or value not in reason


def test_ids_of_64_allowed_characters_and_a_name_of_100_pass() -> None:
    ident = ("Ab0._:-" * 10)[:64]
    data = stage_data(party_id=ident, name="张" * 100, email="a.b+c@mail.bank.example")
    data.update(loan_id=ident, branch_id=ident)
    data["officer"]["id"] = ident
    event = parse_event(raw(cloudevent(data)))
    assert isinstance(event.data, LoanStageChanged) and event.data.loan_id == ident


def test_schema_of_loan_stage_changed_requires_loan_id() -> None:
    assert "loan_id" in json_schemas()["loan.stage.changed"]["required"]


@pytest.mark.parametrize(("tag", "written"), [("en", "en"), ("en-GB", "en"), ("zh-CN", "zh-CN"), ("zh-HK", "zh-CN")])
def test_any_language_tag_is_accepted_and_english_ones_get_english(tag: str, written: str) -> None:
    party = Party.model_validate({**STAGE_DATA["parties"][0], "language": tag})
    assert party.language == tag and message_language(party.language) == written


def test_a_malformed_language_tag_is_refused() -> None:
    with pytest.raises(ValidationError):
        Party.model_validate({**STAGE_DATA["parties"][0], "language": "english please"})
