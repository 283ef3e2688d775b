"""CloudEvents envelope, every event of CONTRACT.md section 2, its topic names and vocabulary — defined once.

Each event model declares its CloudEvents `type`, its topic and whether it may carry personal
data, so a new event type is one model here (listed in EVENT_MODELS) and one handler entry.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Generic, Literal, TypedDict, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

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

# --- the contract's vocabulary (CONTRACT.md 2.2, 2.5) -------------------------------------------

Role = Literal["borrower", "co_borrower", "guarantor"]
Stage = Literal[
    "application_submitted",
    "initial_review_passed",
    "final_check",
    "approved",
    "rejected",
    "withdrawn",
    "disbursed",
]
ReasonCode = Literal[
    "distrust",
    "privacy_concern",
    "time_conflict",
    "communication_barrier",
    "process_misunderstanding",
    "emotional_distress",
    "suspected_fraud",
    "other",
]
_CLOCK = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


def _clock(value: str) -> str:
    match = _CLOCK.match(value)
    if not match or (match.group(1) == "24" and match.group(2) != "00"):
        raise ValueError("must be a clock time HH:MM between 00:00 and 24:00")
    return value


ClockTime = Annotated[str, AfterValidator(_clock)]
Disposition = Literal["completed", "refused", "no_answer", "busy", "wrong_number", "reschedule_requested"]
CallbackState = Literal["scheduled", "due", "completed", "refused", "wrong_number", "expired", "cancelled"]
DISPOSITIONS: frozenset[str] = frozenset(Disposition.__args__)  # type: ignore[attr-defined]
CancelReason = Literal["loan_withdrawn", "loan_rejected", "operator"]
ExpiryReason = Literal["deadline", "attempts_exhausted"]
RescheduleReason = Literal["no_answer", "party_requested", "busy", "late_notice"]
VerificationStatus = Literal["verified", "refused", "unreachable", "cancelled"]
CLOSED_STATES: frozenset[str] = frozenset({"completed", "refused", "wrong_number", "expired", "cancelled"})


class _Data(BaseModel):
    # Tolerant reader: a newer producer may add fields; an older consumer must not dead-letter them.
    model_config = ConfigDict(extra="ignore", frozen=True)


class EventData(_Data):
    """The data of one event type: its CloudEvents type, its topic, and whether it is personal."""

    event_type: ClassVar[str]
    topic: ClassVar[str]
    # Only callback.due and callback.notice.requested may carry name, phone or email (CONTRACT.md 2.3).
    personal: ClassVar[bool] = False


# --- loan.stage.v1 (from upstream) -------------------------------------------------------------


def message_language(tag: str) -> Literal["zh-CN", "en"]:
    """The language we write to a person in: English for any en-*, otherwise Chinese."""
    return "en" if tag.lower() == "en" or tag.lower().startswith("en-") else "zh-CN"


class Window(_Data):
    start: ClockTime
    end: ClockTime


class Officer(_Data):
    id: str = Field(min_length=1)
    name: str | None = None
    email: str | None = None
    phone: str | None = None


class Party(_Data):
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


class LoanStageChanged(EventData):
    event_type = "loan.stage.changed"
    topic = LOAN_STAGE

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


class CallbackFields(TypedDict):
    """The fields every callback event carries, typed, to spread into any of them."""

    loan_id: str
    callback_id: str
    party_id: str
    role: Role
    stage: Stage
    branch_id: str
    attempt: int
    state: CallbackState


class CallbackRef(EventData):
    """The fields every callback event carries."""

    loan_id: str
    callback_id: str
    party_id: str
    role: Role
    stage: Stage
    branch_id: str
    attempt: int = Field(ge=1)
    state: CallbackState


class CallbackScheduled(CallbackRef):
    event_type = "callback.scheduled"
    topic = CALLBACK_LIFECYCLE

    due_at: AwareDatetime
    deadline: AwareDatetime
    notice_at: AwareDatetime
    verification_items: list[str]
    # "phone", or "questionnaire" for a party without contact consent (never phoned).
    channel: Literal["phone", "questionnaire"] = "phone"
    flags: list[str] = Field(default_factory=list)


class CallbackNoticeRequested(CallbackRef):
    event_type = "callback.notice.requested"
    topic = CALLBACK_LIFECYCLE
    personal = True

    channel: Literal["sms", "email"]
    due_at: AwareDatetime
    purpose: str
    topics: list[str]
    language: str
    name: str
    phone: str
    email: str | None = None


class CallbackDue(CallbackRef):
    event_type = "callback.due"
    topic = CALLBACK_LIFECYCLE
    personal = True

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
    event_type = "callback.rescheduled"
    topic = CALLBACK_LIFECYCLE

    due_at: AwareDatetime
    reason: RescheduleReason


class CallbackCancelled(CallbackRef):
    event_type = "callback.cancelled"
    topic = CALLBACK_LIFECYCLE

    reason: CancelReason


class CallbackExpired(CallbackRef):
    event_type = "callback.expired"
    topic = CALLBACK_LIFECYCLE

    reason: ExpiryReason


# --- callback.outcome.v1, callback.refused.v1, loan.verification.v1 (outcomes) -----------------


class CallbackOutcomeRecorded(CallbackRef):
    event_type = "callback.outcome.recorded"
    topic = CALLBACK_OUTCOME

    attempt_id: str
    disposition: Disposition
    reason_code: ReasonCode | None = None
    agent_id: str
    recorded_at: AwareDatetime
    reschedule_to: AwareDatetime | None = None


class CallbackRefused(CallbackRef):
    event_type = "callback.refused"
    topic = CALLBACK_REFUSED

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


class LoanVerificationCompleted(EventData):
    event_type = "loan.verification.completed"
    topic = LOAN_VERIFICATION

    loan_id: str
    stage: Stage
    branch_id: str
    status: VerificationStatus
    parties: list[PartyResult]
    completed_at: AwareDatetime


# --- notification.v1 (notifier) ---------------------------------------------------------------


class NotificationSent(EventData):
    event_type = "notification.sent"
    topic = NOTIFICATION

    notification_id: str
    loan_id: str
    channel: Literal["webhook", "email", "sms"]
    kind: str
    recipient: str  # a role or an id, never an address
    source_event_id: str
    attempts: int


class NotificationFailed(NotificationSent):
    event_type = "notification.failed"
    topic = NOTIFICATION

    error: str


class EscalationEvent(EventData):
    escalation_id: str
    level: int = Field(ge=1, le=2)
    rule: str
    loan_id: str
    assignee: str
    callback_id: str | None = None
    by: str | None = None


class EscalationRaised(EscalationEvent):
    event_type = "escalation.raised"
    topic = NOTIFICATION


class EscalationAcknowledged(EscalationEvent):
    event_type = "escalation.acknowledged"
    topic = NOTIFICATION


class EscalationResolved(EscalationEvent):
    event_type = "escalation.resolved"
    topic = NOTIFICATION


EVENT_MODELS: tuple[type[EventData], ...] = (
    LoanStageChanged,
    CallbackScheduled,
    CallbackNoticeRequested,
    CallbackDue,
    CallbackRescheduled,
    CallbackCancelled,
    CallbackExpired,
    CallbackOutcomeRecorded,
    CallbackRefused,
    LoanVerificationCompleted,
    NotificationSent,
    NotificationFailed,
    EscalationRaised,
    EscalationAcknowledged,
    EscalationResolved,
)
EVENT_TYPES: dict[str, type[EventData]] = {model.event_type: model for model in EVENT_MODELS}


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


D = TypeVar("D", bound=EventData, covariant=True)


@dataclass(frozen=True)
class Event(Generic[D]):
    """A parsed event: its envelope and its validated, typed data."""

    envelope: Envelope
    data: D

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def type(self) -> str:
        return self.envelope.type


def parse_event(raw: bytes | None, accepted: frozenset[str] | None = None) -> Event[EventData]:
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


def new_envelope(data: EventData, *, source: str, subject: str, event_id: str | None = None) -> Envelope:
    """Wrap event data in a CloudEvents envelope."""
    return Envelope(
        specversion="1.0",
        id=event_id or str(uuid.uuid4()),
        source=source,
        type=data.event_type,
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
