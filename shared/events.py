"""CloudEvents envelope, every event of CONTRACT.md section 2, its topic names and vocabulary — defined once.

Each event model declares its CloudEvents `type`, its topic and whether it may carry personal
data, so a new event type is one model here (listed in EVENT_MODELS) and one handler entry.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
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

# Field rules of upstream input (CONTRACT.md 2.2). Messages name the rule, never the value.
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_PHONE_SEPARATORS = re.compile(r"[\s-]")
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}"
    r"@(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)
NAME_MAX = 100


def canonical_phone(value: str) -> str:
    """The phone with spaces and dashes removed: `+86 138-0013-8000` is `+8613800138000`."""
    return _PHONE_SEPARATORS.sub("", value)


def normalize_phone(value: str) -> str:
    """A phone in E.164 once spaces and dashes are removed; raises ValueError (without the value) otherwise."""
    phone = canonical_phone(value)
    if not _E164.match(phone):
        raise ValueError("must be an E.164 phone number: + and 7-15 digits")
    return phone


def _identifier(value: str) -> str:
    if not _ID.match(value):
        raise ValueError("must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    return value


def _email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError("must be one email address")
    return value


Identifier = Annotated[str, AfterValidator(_identifier)]
Phone = Annotated[str, AfterValidator(normalize_phone)]
Email = Annotated[str, AfterValidator(_email)]
PersonName = Annotated[str, Field(min_length=1, max_length=NAME_MAX)]
Disposition = Literal["completed", "refused", "no_answer", "busy", "wrong_number", "reschedule_requested"]
CallbackState = Literal["scheduled", "due", "completed", "refused", "wrong_number", "expired", "cancelled"]
CancelReason = Literal["loan_withdrawn", "loan_rejected", "operator"]
ExpiryReason = Literal["deadline", "attempts_exhausted"]
RescheduleReason = Literal["no_answer", "party_requested", "busy", "late_notice"]
AttemptChannel = Literal["phone", "self_service"]
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
    id: Identifier
    name: PersonName | None = None
    email: Email | None = None
    phone: Phone | None = None


class Party(_Data):
    party_id: Identifier
    role: Role
    name: PersonName
    phone: Phone
    email: Email | None = None
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
            raise ValueError("must be an IANA time zone such as Asia/Shanghai") from None
        return value


class LoanStageChanged(EventData):
    event_type = "loan.stage.changed"
    topic = LOAN_STAGE

    loan_id: Identifier
    stage: Stage
    previous_stage: Stage | None = None
    branch_id: Identifier
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
    # The loan's arm in each running experiment (CONTRACT.md 2.4); {} when none runs.
    arms: dict[str, str] = Field(default_factory=dict)


class PartyAccess(EventData):
    """What only the personal events carry (CONTRACT.md 2.3): the caller code and the party's own page.

    `slots` are the times the page may offer for a new call (inside calling hours, before the deadline,
    never a busy day of the person): the scheduler alone knows the person's busy days.
    """

    caller_code: str | None = Field(default=None, pattern=r"^[0-9]{6}$")
    self_service_url: str | None = None
    deadline: AwareDatetime | None = None
    timezone: str | None = None
    slots: list[AwareDatetime] = Field(default_factory=list)


class CallbackNoticeRequested(CallbackRef, PartyAccess):
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


class CallbackDue(CallbackRef, PartyAccess):
    event_type = "callback.due"
    topic = CALLBACK_LIFECYCLE
    personal = True

    due_at: AwareDatetime
    deadline: AwareDatetime  # always known when a call is due
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
    agent_id: str | None  # None when the party answered on their own page
    channel: AttemptChannel = "phone"
    recorded_at: AwareDatetime
    reschedule_to: AwareDatetime | None = None


class CallbackRefused(CallbackRef):
    event_type = "callback.refused"
    topic = CALLBACK_REFUSED

    reason_code: ReasonCode
    agent_id: str | None
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
    except UnicodeDecodeError:
        raise InvalidEvent("not valid JSON: not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent("not a CloudEvent: the JSON value is not an object")
    try:
        envelope = Envelope.model_validate(obj)
    except ValidationError as exc:
        raise InvalidEvent(f"not a CloudEvent: {validation_reason(exc)}") from None
    model = EVENT_TYPES.get(envelope.type)
    if model is None:
        # The type is upstream input like any other field: never echoed (the DLQ keeps the message).
        raise InvalidEvent("unknown event type")
    if accepted is not None and envelope.type not in accepted:
        raise InvalidEvent(f"unknown event type {envelope.type!r} for this topic")
    try:
        data = model.model_validate(envelope.data or {})
    except ValidationError as exc:
        raise InvalidEvent(f"invalid data for {envelope.type}: {validation_reason(exc)}") from None
    return Event(envelope=envelope, data=data)


_LOC_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def validation_reason(exc: ValidationError) -> str:
    """Each failing field and its rule, never the input: a value may be personal data, even a dict key."""
    return "; ".join(f"{_location(e['loc'])}: {_message(e)}" for e in exc.errors())


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) if isinstance(p, int) or _LOC_PART.match(p) else "<key>" for p in loc]
    return ".".join(parts) or "(root)"


def _message(error: Any) -> str:
    # Some pydantic messages quote the input (a union tag, say): fall back to the error's kind.
    value = error.get("input")
    message = str(error["msg"])
    if isinstance(value, str | int | float) and str(value) and str(value) in message:
        return str(error["type"])
    return message



def new_envelope(
    data: EventData,
    *,
    source: str,
    subject: str,
    event_id: str | None = None,
    extensions: Mapping[str, str] | None = None,
) -> Envelope:
    """Wrap event data in a CloudEvents envelope (extensions: e.g. the distributed-tracing `traceparent`)."""
    return Envelope(
        **(extensions or {}),
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
