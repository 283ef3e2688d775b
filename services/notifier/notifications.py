"""Who is told what: the officer of a refusal, the party of a notice, both of an expiry or a no-consent callback."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from sqlmodel import col, select

from services.notifier.contacts import Contacts, Person
from services.notifier.escalation import raise_level1
from services.notifier.messages import find_party
from services.notifier.models import NoticeArm
from services.notifier.outbound import (
    Outbound,
    load_contacts,
    notify,
    notify_officer,
    officer_contacts,
    officer_id,
    party_route,
)
from shared.db import UnitOfWork, insert_new, utcnow
from shared.events import (
    CallbackExpired,
    CallbackNoticeRequested,
    CallbackRef,
    CallbackRefused,
    CallbackScheduled,
)
from shared.policy import Policy


def callback_base(event: CallbackRef) -> dict[str, Any]:
    """The ids every notification about a callback carries."""
    return event.model_dump(mode="json", include={"loan_id", "callback_id", "party_id", "role", "stage", "branch_id"})


def questionnaire_url(policy: Policy, callback_id: str) -> str | None:
    """The bank's own questionnaire link for one callback; None when the policy leaves it to the party's page."""
    # The built-in page's link is signed per callback and travels only on the personal events, which a party
    # without consent or with the attempts used up does not get here: the message gives the hotline instead.
    if not policy.escalation.questionnaire_url:
        return None
    return policy.escalation.questionnaire_url.replace("{callback_id}", quote(callback_id, safe=""))


async def refusal(*, uow: UnitOfWork, event: CallbackRefused, event_id: str, policy: Policy, out: Outbound) -> None:
    """Notify the loan officer; raise a level-1 escalation when a policy rule matches."""
    contacts = await officer_contacts(uow=uow, out=out, loan_id=event.loan_id)
    base = {
        **callback_base(event),
        "reason_code": event.reason_code,
        "refusals_for_loan": event.refusals_for_loan,
        "occurred_at": event.occurred_at.isoformat(),
    }
    if policy.escalation.notify_officer_on_refusal:
        await notify_officer(
            uow=uow,
            out=out,
            source_event_id=event_id,
            kind="refusal",
            payload={"type": "callback.refused", **base, "officer_id": officer_id(contacts)},
            contacts=contacts,
        )
    await raise_level1(
        uow=uow, event=event, event_id=event_id, policy=policy, officer_id=officer_id(contacts), now=utcnow()
    )


async def notice(
    *, uow: UnitOfWork, event: CallbackNoticeRequested, event_id: str, policy: Policy, out: Outbound
) -> None:
    """The advance notice to the party, addressed from the notice itself."""
    kept = await load_contacts(uow=uow, cipher=out.cipher, loan_id=event.loan_id)
    timezone = (find_party(kept or {}, event.party_id) or {}).get("timezone")
    party = Person(
        party_id=event.party_id, name=event.name, phone=event.phone, email=event.email, language=event.language,
        timezone=timezone,
    )  # fmt: skip
    payload = {
        "type": "callback.notice.requested",
        **callback_base(event),
        "due_at": event.due_at.isoformat(),
        "purpose": event.purpose,
        "topics": list(event.topics),
    }
    contacts = Contacts(parties=[party])
    await notify(
        uow=uow,
        out=out,
        source_event_id=event_id,
        kind="notice",
        payload=payload,
        contacts=contacts,
        routes=[
            party_route(out=out, contacts=contacts, party_id=event.party_id, prefer_email=event.channel == "email")
        ],
        # Only in the text the party reads (sealed): the stored payload and the webhook never carry them.
        private={
            "bank": policy.bank.name, "hotline": policy.bank.hotline, "caller_code": event.caller_code,
            "url": event.self_service_url,
            "variant": policy.message_variant(await arms_of(uow=uow, callback_id=event.callback_id)),
        },
    )  # fmt: skip


async def questionnaire(
    *,
    uow: UnitOfWork,
    event: CallbackRef,
    event_id: str,
    policy: Policy,
    out: Outbound,
    officer_kind: str,
    reason: str,
    to_party: bool = True,
) -> None:
    """Send the party the questionnaire link (unless told not to) and tell the officer why."""
    contacts = await officer_contacts(uow=uow, out=out, loan_id=event.loan_id)
    payload = {
        **callback_base(event), "reason": reason, "url": questionnaire_url(policy, event.callback_id),
        "hotline": policy.bank.hotline, "bank": policy.bank.name,
    }  # fmt: skip
    if to_party:
        await notify(
            uow=uow,
            out=out,
            source_event_id=event_id,
            kind="questionnaire",
            payload={"type": "questionnaire", **payload},
            contacts=contacts,
            routes=[party_route(out=out, contacts=contacts, party_id=event.party_id, prefer_email=True)],
        )
    await notify_officer(
        uow=uow,
        out=out,
        source_event_id=event_id,
        kind=officer_kind,
        payload={"type": event.event_type, **payload, "officer_id": officer_id(contacts)},
        contacts=contacts,
    )


async def expired(*, uow: UnitOfWork, event: CallbackExpired, event_id: str, policy: Policy, out: Outbound) -> None:
    """Tell the officer; send the party the questionnaire when the attempts ran out (CONTRACT.md 4)."""
    # A deadline tells the officer only: a party without consent already has the link from scheduling.
    await questionnaire(
        uow=uow, event=event, event_id=event_id, policy=policy, out=out, officer_kind="expired",
        reason=event.reason, to_party=event.reason == "attempts_exhausted",
    )  # fmt: skip


async def keep_arms(*, uow: UnitOfWork, callback_id: str, arms: dict[str, str]) -> None:
    """Remember a callback's experiment arms from `callback.scheduled`; the first assignment stays."""
    # One statement, written at once: the notice may follow in the same batch.
    if arms:
        rows = [{"callback_id": callback_id, "experiment": e, "arm": a} for e, a in arms.items()]
        await uow.session.execute(insert_new(NoticeArm.__table__, uow.dialect).values(rows))  # type: ignore[attr-defined]


async def arms_of(*, uow: UnitOfWork, callback_id: str) -> dict[str, str]:
    """The experiment arms `callback.scheduled` gave a callback (same loan key: it comes before the notice)."""
    rows = await uow.session.execute(select(NoticeArm).where(col(NoticeArm.callback_id) == callback_id))
    return {row.experiment: row.arm for row in rows.scalars()}


async def scheduled(*, uow: UnitOfWork, event: CallbackScheduled, event_id: str, policy: Policy, out: Outbound) -> None:
    """Keep the callback's arms; a party without contact consent is never phoned: the questionnaire is their way."""
    await keep_arms(uow=uow, callback_id=event.callback_id, arms=event.arms)
    if event.channel == "questionnaire":
        await questionnaire(
            uow=uow, event=event, event_id=event_id, policy=policy, out=out, officer_kind="no_consent",
            reason="no_consent",
        )  # fmt: skip
