"""CloudEvents envelope, every event of CONTRACT.md section 2, and the topic names — defined once."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.policy import ClockTime, ReasonCode, Role, Stage

# Topics (CONTRACT.md 2.1); HUIFANG_TOPIC_PREFIX is applied by Settings.topic().
LOAN_STAGE = "loan.stage.v1"
CALLBACK_LIFECYCLE = "callback.lifecycle.v1"
CALLBACK_OUTCOME = "callback.outcome.v1"
CALLBACK_REFUSED = "callback.refused.v1"
LOAN_VERIFICATION = "loan.verification.v1"
NOTIFICATION = "notification.v1"
TOPICS = (LOAN_STAGE, CALLBACK_LIFECYCLE, CALLBACK_OUTCOME, CALLBACK_REFUSED, LOAN_VERIFICATION, NOTIFICATION)
DLQ_SUFFIX = ".dlq"

CONTENT_TYPE = "application/cloudevents+json"
# The only emitted events that may carry name, phone or email (CONTRACT.md 2.3).
PERSONAL_EVENT_TYPES = frozenset({"callback.due", "callback.notice.requested"})

Disposition = Literal["completed", "refused", "no_answer", "busy", "wrong_number", "reschedule_requested"]
CallbackState = Literal["scheduled", "due", "completed", "refused", "wrong_number", "expired", "cancelled"]
DISPOSITIONS: frozenset[str] = frozenset(Disposition.__args__)  # type: ignore[attr-defined]
CLOSED_STATES: frozenset[str] = frozenset({"completed", "refused", "wrong_number", "expired", "cancelled"})


class _Data(BaseModel):
    # Tolerant reader: a newer producer may add fields; an older consumer must not dead-letter them.
    model_config = ConfigDict(extra="ignore", frozen=True)


_Open = _Data


# --- loan.stage.v1 (from upstream) -------------------------------------------------------------


def message_language(tag: str) -> Literal["zh-CN", "en"]:
    """The language we write to a person in: English for any en-*, otherwise Chinese."""
    return "en" if tag.lower() == "en" or tag.lower().startswith("en-") else "zh-CN"


class Window(_Open):
    start: ClockTime
    end: ClockTime


class Officer(_Open):
    id: str = Field(min_length=1)
    name: str | None = None
    email: str | None = None
    phone: str | None = None


class Party(_Open):
    party_id: str = Field(min_length=1)
    role: Role
    name: str = Field(min_length=1)
    phone: str = Field(min_length=3)
    email: str | None = None
    timezone: str = "Asia/Shanghai"
    language: str = Field(default="zh-CN", pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    preferred_window: Window | None = None
    contact_consent: bool = True

    @field_validator("timezone")
    @classmethod
    def _iana(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}") from None
        return value


class LoanStageChanged(_Open):
    loan_id: str = Field(min_length=1)
    stage: Stage
    previous_stage: Stage | None = None
    branch_id: str = Field(min_length=1)
    product: str | None = None
    amount: Decimal | None = None
    currency: str | None = None
    officer: Officer
    parties: list[Party] = Field(default_factory=list)


# --- callback.lifecycle.v1 (scheduler) ---------------------------------------------------------


class CallbackRef(_Data):
    loan_id: str
    callback_id: str
    party_id: str
    role: Role
    stage: Stage
    branch_id: str
    attempt: int = Field(ge=1)
    state: CallbackState


class CallbackScheduled(CallbackRef):
    due_at: AwareDatetime
    deadline: AwareDatetime
    notice_at: AwareDatetime
    verification_items: list[str]
    # "phone", or "questionnaire" for a party without contact consent (never phoned).
    channel: Literal["phone", "questionnaire"] = "phone"
    flags: list[str] = Field(default_factory=list)


class CallbackNoticeRequested(CallbackRef):
    channel: Literal["sms", "email"]
    due_at: AwareDatetime
    purpose: str
    topics: list[str]
    language: str
    name: str
    phone: str
    email: str | None = None


class CallbackDue(CallbackRef):
    due_at: AwareDatetime
    deadline: AwareDatetime
    name: str
    phone: str
    email: str | None = None
    timezone: str
    language: str
    purpose: str
    verification_items: list[str]


class CallbackRescheduled(CallbackRef):
    due_at: AwareDatetime
    reason: Literal["no_answer", "party_requested", "busy"]


class CallbackCancelled(CallbackRef):
    reason: Literal["loan_withdrawn", "loan_rejected", "operator"]


class CallbackExpired(CallbackRef):
    reason: Literal["deadline", "attempts_exhausted"]


# --- callback.outcome.v1, callback.refused.v1, loan.verification.v1 (outcomes) -----------------


class CallbackOutcomeRecorded(CallbackRef):
    attempt_id: str
    disposition: Disposition
    reason_code: ReasonCode | None = None
    agent_id: str
    recorded_at: AwareDatetime
    reschedule_to: AwareDatetime | None = None


class CallbackRefused(CallbackRef):
    reason_code: ReasonCode
    agent_id: str
    refusals_for_loan: int = Field(ge=1)
    occurred_at: AwareDatetime


class PartyResult(_Data):
    party_id: str
    role: Role
    callback_id: str
    # The final disposition (CONTRACT.md 2.4) when a call ended it; none for an expired or cancelled callback.
    disposition: Disposition | None
    state: CallbackState
    reason: str | None = None  # why it expired: deadline | attempts_exhausted


class LoanVerificationCompleted(_Data):
    loan_id: str
    stage: Stage
    branch_id: str
    status: Literal["verified", "refused", "unreachable", "cancelled"]
    parties: list[PartyResult]
    completed_at: AwareDatetime


# --- notification.v1 (notifier) ---------------------------------------------------------------


class NotificationSent(_Data):
    notification_id: str
    loan_id: str
    channel: Literal["webhook", "email", "sms"]
    kind: str
    recipient: str  # a role or an id, never an address
    source_event_id: str
    attempts: int


class NotificationFailed(NotificationSent):
    error: str


class EscalationEvent(_Data):
    escalation_id: str
    level: int = Field(ge=1, le=2)
    rule: str
    loan_id: str
    assignee: str
    callback_id: str | None = None
    by: str | None = None


class EscalationRaised(EscalationEvent):
    pass


class EscalationAcknowledged(EscalationEvent):
    pass


class EscalationResolved(EscalationEvent):
    pass


EVENT_TYPES: dict[str, type[BaseModel]] = {
    "loan.stage.changed": LoanStageChanged,
    "callback.scheduled": CallbackScheduled,
    "callback.notice.requested": CallbackNoticeRequested,
    "callback.due": CallbackDue,
    "callback.rescheduled": CallbackRescheduled,
    "callback.cancelled": CallbackCancelled,
    "callback.expired": CallbackExpired,
    "callback.outcome.recorded": CallbackOutcomeRecorded,
    "callback.refused": CallbackRefused,
    "loan.verification.completed": LoanVerificationCompleted,
    "notification.sent": NotificationSent,
    "notification.failed": NotificationFailed,
    "escalation.raised": EscalationRaised,
    "escalation.acknowledged": EscalationAcknowledged,
    "escalation.resolved": EscalationResolved,
}
TYPE_OF: dict[type[BaseModel], str] = {model: name for name, model in EVENT_TYPES.items()}
TOPIC_OF_TYPE: dict[str, str] = {
    "loan.stage.changed": LOAN_STAGE,
    **{
        t: CALLBACK_LIFECYCLE
        for t in EVENT_TYPES
        if t.startswith("callback.") and t not in ("callback.outcome.recorded", "callback.refused")
    },
    "callback.outcome.recorded": CALLBACK_OUTCOME,
    "callback.refused": CALLBACK_REFUSED,
    "loan.verification.completed": LOAN_VERIFICATION,
    **{t: NOTIFICATION for t in EVENT_TYPES if t.startswith(("notification.", "escalation."))},
}


class Envelope(BaseModel):
    """A CloudEvents 1.0 event in structured JSON mode."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"]
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    time: AwareDatetime | None = None
    subject: str | None = None
    datacontenttype: str | None = "application/json"
    data: dict[str, Any] | None = None


class InvalidEvent(ValueError):
    """A message that cannot be processed; the reason goes to the dead-letter topic."""


class Event(BaseModel):
    """A parsed event: its envelope and its validated data."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    envelope: Envelope
    data: BaseModel

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def type(self) -> str:
        return self.envelope.type


def parse_event(raw: bytes | None, accepted: frozenset[str] | None = None) -> Event:
    """Decode and validate one Kafka message value; raises InvalidEvent with a readable reason."""
    if raw is None:
        raise InvalidEvent("empty message (tombstone)")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent("not a CloudEvent: the JSON value is not an object")
    try:
        envelope = Envelope.model_validate(obj)
    except ValidationError as exc:
        raise InvalidEvent(f"not a CloudEvent: {_errors(exc)}") from None
    model = EVENT_TYPES.get(envelope.type)
    if model is None or (accepted is not None and envelope.type not in accepted):
        raise InvalidEvent(f"unknown event type {envelope.type!r}")
    try:
        data = model.model_validate(envelope.data or {})
    except ValidationError as exc:
        raise InvalidEvent(f"invalid data for {envelope.type}: {_errors(exc)}") from None
    return Event(envelope=envelope, data=data)


def _errors(exc: ValidationError) -> str:
    # Field locations and messages only: input values may hold personal data.
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors())


def new_envelope(data: BaseModel, *, source: str, subject: str, event_id: str | None = None) -> Envelope:
    """Wrap event data in a CloudEvents envelope."""
    return Envelope(
        specversion="1.0",
        id=event_id or str(uuid.uuid4()),
        source=source,
        type=TYPE_OF[type(data)],
        time=datetime.now(UTC),
        subject=subject,
        datacontenttype="application/json",
        data=data.model_dump(mode="json"),
    )


def encode(envelope: Envelope) -> bytes:
    return envelope.model_dump_json(exclude_none=True).encode()


def json_schemas() -> dict[str, Any]:
    """JSON Schema of every event's data, generated from the models."""
    return {name: model.model_json_schema() for name, model in EVENT_TYPES.items()}
