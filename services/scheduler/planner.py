"""Pure calendar logic: when to notify, when to call, when a callback expires.

The walking skeleton honours only the notice lead; calling hours, holidays, preferred windows
and business days arrive with the full policy (issue 3). Everything here is a pure function of
(policy, party, now) so that it can be tested without I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.events import Party
from shared.policy import Policy


@dataclass(frozen=True)
class Plan:
    notice_at: datetime
    due_at: datetime
    deadline: datetime


def plan_first_call(policy: Policy, party: Party, now: datetime) -> Plan:
    """Notice now, call after the notice lead, expire after the deadline's days."""
    due_at = now + policy.notice.lead
    deadline = max(now + timedelta(days=policy.attempts.deadline_business_days), due_at + timedelta(hours=1))
    return Plan(notice_at=now, due_at=due_at, deadline=deadline)


def plan_retry(policy: Policy, now: datetime, deadline: datetime) -> datetime | None:
    """Next try after no_answer/busy: min_gap later, or None when that passes the deadline."""
    retry_at = now + policy.attempts.min_gap
    return retry_at if retry_at < deadline else None


def purpose_text(language: str, stage: str) -> tuple[str, list[str]]:
    """Why the party is called and what will be asked, in their language."""
    if language == "en":
        return (
            "Verification call for your mortgage application before approval",
            ["identity", "loan amount and purpose", "your role in the loan", "consent to proceed"],
        )
    return (
        "您的房贷申请审批前的核实回访",
        ["身份核实", "贷款金额与用途", "您在贷款中的角色", "是否同意继续办理"],
    )


VERIFICATION_ITEMS = ["identity", "loan_amount", "loan_purpose", "role_consent"]
