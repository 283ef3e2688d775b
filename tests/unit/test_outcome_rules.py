"""Outcome rules: the per-loan verification status and what a recorded attempt must look like."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from services.outcomes.attempts import AttemptIn
from services.outcomes.models import CallbackView
from services.outcomes.verification import party_result, verification_status

# --- verification_status -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "final",
    [
        ["refused"],
        ["completed", "refused"],
        ["refused", "expired:attempts_exhausted"],
        ["wrong_number", "refused", "cancelled"],
        ["cancelled", "expired:deadline", "completed", "refused"],
    ],
)
def test_refused_wins_over_everything(final: list[str]) -> None:
    assert verification_status(final) == "refused"


@pytest.mark.parametrize(
    "final",
    [
        ["expired:attempts_exhausted"],
        ["expired:deadline"],
        ["wrong_number"],
        ["completed", "expired:attempts_exhausted"],
        ["completed", "wrong_number"],
        ["cancelled", "expired:deadline"],
    ],
)
def test_unreachable(final: list[str]) -> None:
    assert verification_status(final) == "unreachable"


@pytest.mark.parametrize("final", [["cancelled"], ["cancelled", "cancelled"], ["completed", "cancelled"]])
def test_cancelled(final: list[str]) -> None:
    assert verification_status(final) == "cancelled"


@pytest.mark.parametrize("final", [["completed"], ["completed", "completed", "completed"]])
def test_all_completed_is_verified(final: list[str]) -> None:
    assert verification_status(final) == "verified"


def test_order_does_not_matter() -> None:
    final = ["completed", "expired:deadline", "cancelled"]
    assert verification_status(final) == verification_status(list(reversed(final))) == "unreachable"


# --- AttemptIn ---------------------------------------------------------------------------------

CONTRACT_DISPOSITIONS = ["completed", "refused", "no_answer", "busy", "wrong_number", "reschedule_requested"]
CONTRACT_REASONS = [
    "distrust",
    "privacy_concern",
    "time_conflict",
    "communication_barrier",
    "process_misunderstanding",
    "emotional_distress",
    "suspected_fraud",
    "other",
]


def attempt(**fields: Any) -> AttemptIn:
    return AttemptIn.model_validate({"agent_id": "A-9", **fields})


def future(**delta: float) -> datetime:
    return datetime.now(UTC) + timedelta(**(delta or {"days": 1}))


@pytest.mark.parametrize("disposition", [d for d in CONTRACT_DISPOSITIONS if d != "refused"])
def test_every_other_contract_disposition_is_accepted(disposition: str) -> None:
    assert attempt(disposition=disposition).disposition == disposition


@pytest.mark.parametrize("reason", CONTRACT_REASONS)
def test_refused_with_every_contract_reason_is_accepted(reason: str) -> None:
    assert attempt(disposition="refused", reason_code=reason).reason_code == reason


def test_full_body_of_the_contract_is_accepted() -> None:
    body = attempt(
        disposition="completed",
        started_at="2026-11-28T18:05:00+08:00",
        duration_s=312,
        notes="客户确认贷款信息无误",
        verification={"identity": True, "loan_amount": True},
    )
    assert body.duration_s == 312
    assert body.verification == {"identity": True, "loan_amount": True}


def test_refused_without_reason_code_fails() -> None:
    with pytest.raises(ValidationError, match="reason_code"):
        attempt(disposition="refused")


@pytest.mark.parametrize("disposition", [d for d in CONTRACT_DISPOSITIONS if d != "refused"])
def test_reason_code_without_refusal_fails(disposition: str) -> None:
    with pytest.raises(ValidationError, match="reason_code"):
        attempt(disposition=disposition, reason_code="distrust")


def test_unknown_reason_code_fails() -> None:
    with pytest.raises(ValidationError):
        attempt(disposition="refused", reason_code="rude")


@pytest.mark.parametrize("disposition", ["no_answer", "completed", "busy", "refused"])
def test_reschedule_to_with_other_disposition_fails(disposition: str) -> None:
    extra = {"reason_code": "time_conflict"} if disposition == "refused" else {}
    with pytest.raises(ValidationError, match="reschedule_to"):
        attempt(disposition=disposition, reschedule_to=future(), **extra)


def test_reschedule_to_in_the_past_fails() -> None:
    with pytest.raises(ValidationError, match="future"):
        attempt(disposition="reschedule_requested", reschedule_to=future(hours=-1))


def test_reschedule_to_without_offset_fails() -> None:
    naive = (datetime.now(UTC) + timedelta(days=1)).replace(tzinfo=None)
    with pytest.raises(ValidationError, match="reschedule_to"):
        attempt(disposition="reschedule_requested", reschedule_to=naive.isoformat())


def test_reschedule_requested_with_future_aware_time_passes() -> None:
    when = future(days=2)
    assert attempt(disposition="reschedule_requested", reschedule_to=when).reschedule_to == when


def test_reschedule_to_in_another_offset_passes() -> None:
    when = (datetime.now(UTC) + timedelta(days=1)).astimezone().isoformat()
    assert attempt(disposition="reschedule_requested", reschedule_to=when).reschedule_to is not None


def test_unknown_field_fails() -> None:
    with pytest.raises(ValidationError, match="phone"):
        attempt(disposition="completed", phone="+8613800138000")


@pytest.mark.parametrize("disposition", ["hung_up", "voicemail", "COMPLETED", ""])
def test_disposition_outside_the_contract_fails(disposition: str) -> None:
    with pytest.raises(ValidationError, match="disposition"):
        attempt(disposition=disposition)


def test_agent_id_may_be_left_to_the_service() -> None:
    # The party's own page has no agent; a phone attempt without one is refused by record_attempt (422).
    assert AttemptIn.model_validate({"disposition": "completed"}).agent_id is None
    with pytest.raises(ValidationError, match="agent_id"):
        AttemptIn.model_validate({"disposition": "completed", "agent_id": ""})


def test_negative_duration_fails() -> None:
    with pytest.raises(ValidationError, match="duration_s"):
        attempt(disposition="completed", duration_s=-1)


def test_verification_values_must_be_booleans() -> None:
    with pytest.raises(ValidationError, match="verification"):
        attempt(disposition="completed", verification={"identity": "maybe"})


def _view(final: str | None, state: str) -> CallbackView:
    return CallbackView(
        callback_id="CB-1",
        loan_id="L-1",
        stage="final_check",
        branch_id="BR-1",
        party_id="P-1",
        role="borrower",
        state=state,
        final_disposition=final,
    )


@pytest.mark.parametrize(
    ("final", "state", "expected"),
    [
        ("refused", "refused", ("refused", "refused", None)),
        ("wrong_number", "wrong_number", ("wrong_number", "wrong_number", None)),
        ("expired:attempts_exhausted", "expired", (None, "expired", "attempts_exhausted")),
        ("cancelled", "cancelled", (None, "cancelled", None)),
    ],
)
def test_party_result_reports_only_contract_dispositions(final: str, state: str, expected: tuple) -> None:
    line = party_result(_view(final, state))
    assert (line.disposition, line.state, line.reason) == expected
