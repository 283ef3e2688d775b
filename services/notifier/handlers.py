"""Events in: loan stages keep contacts; refusals, notices, expiries and no-consent callbacks notify people."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from services.notifier.escalation import raise_level1
from services.notifier.messages import find_party
from services.notifier.models import LoanContact
from services.notifier.outbound import Outbound, load_contacts, notify, officer_id, officer_routes, party_route
from shared.crypto import Cipher
from shared.db import UnitOfWork, utcnow
from shared.events import (
    TYPE_OF,
    CallbackExpired,
    CallbackNoticeRequested,
    CallbackRef,
    CallbackRefused,
    CallbackScheduled,
    Event,
    LoanStageChanged,
)
from shared.kafka import Handler
from shared.policy import Policy


async def on_loan_stage(*, uow: UnitOfWork, event: LoanStageChanged, cipher: Cipher) -> LoanContact:
    """Keep the latest officer and party contacts of a loan, encrypted."""
    fields = {"party_id", "role", "name", "phone", "email", "language", "timezone"}
    contacts = {
        "officer": event.officer.model_dump(mode="json"),
        "parties": [p.model_dump(mode="json", include=fields) for p in event.parties],
    }
    row = await uow.session.get(LoanContact, event.loan_id)
    if row is None:
        row = LoanContact(
            loan_id=event.loan_id, branch_id=event.branch_id, officer_id=event.officer.id, contacts_enc=""
        )
    row.branch_id = event.branch_id
    row.officer_id = event.officer.id
    row.contacts_enc = cipher.encrypt_json(contacts)
    row.updated_at = utcnow()
    uow.session.add(row)
    # Flush so a second event for the loan in the same batch finds this row.
    await uow.session.flush()
    return row


def callback_base(event: CallbackRef) -> dict[str, Any]:
    """The ids every notification about a callback carries."""
    return event.model_dump(mode="json", include={"loan_id", "callback_id", "party_id", "role", "stage", "branch_id"})


def questionnaire_url(policy: Policy, callback_id: str) -> str:
    """The policy's questionnaire link for one callback."""
    return policy.escalation.questionnaire_url.replace("{callback_id}", quote(callback_id, safe=""))


async def on_refusal(*, uow: UnitOfWork, event: CallbackRefused, event_id: str, policy: Policy, out: Outbound) -> None:
    """Notify the loan officer; raise a level-1 escalation when a policy rule matches."""
    contacts = await load_contacts(uow=uow, cipher=out.cipher, loan_id=event.loan_id)
    base = {
        **callback_base(event),
        "reason_code": event.reason_code,
        "refusals_for_loan": event.refusals_for_loan,
        "occurred_at": event.occurred_at.isoformat(),
    }
    if policy.escalation.notify_officer_on_refusal:
        await notify(
            uow=uow,
            out=out,
            source_event_id=event_id,
            kind="refusal",
            payload={"type": "callback.refused", **base, "officer_id": officer_id(contacts)},
            contacts=contacts,
            routes=officer_routes(out=out, contacts=contacts),
        )
    await raise_level1(
        uow=uow, event=event, event_id=event_id, policy=policy, officer_id=officer_id(contacts), now=utcnow()
    )


async def on_notice(*, uow: UnitOfWork, event: CallbackNoticeRequested, event_id: str, out: Outbound) -> None:
    """The advance notice to the party, addressed from the notice itself."""
    kept = await load_contacts(uow=uow, cipher=out.cipher, loan_id=event.loan_id)
    timezone = (find_party(kept or {}, event.party_id) or {}).get("timezone")
    party = {
        "party_id": event.party_id,
        "name": event.name,
        "phone": event.phone,
        "email": event.email,
        "language": event.language,
        "timezone": timezone,
    }
    payload = {
        "type": "callback.notice.requested",
        **callback_base(event),
        "due_at": event.due_at.isoformat(),
        "purpose": event.purpose,
        "topics": list(event.topics),
    }
    contacts = {"parties": [party]}
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
    )


async def send_questionnaire(
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
    contacts = await load_contacts(uow=uow, cipher=out.cipher, loan_id=event.loan_id)
    payload = {**callback_base(event), "reason": reason, "url": questionnaire_url(policy, event.callback_id)}
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
    await notify(
        uow=uow,
        out=out,
        source_event_id=event_id,
        kind=officer_kind,
        payload={"type": TYPE_OF[type(event)], **payload, "officer_id": officer_id(contacts)},
        contacts=contacts,
        routes=officer_routes(out=out, contacts=contacts),
    )


def handlers(policy: Policy, out: Outbound) -> dict[str, Handler]:
    async def loan_stage(uow: UnitOfWork, event: Event) -> None:
        assert isinstance(event.data, LoanStageChanged)
        await on_loan_stage(uow=uow, event=event.data, cipher=out.cipher)

    async def refused(uow: UnitOfWork, event: Event) -> None:
        assert isinstance(event.data, CallbackRefused)
        await on_refusal(uow=uow, event=event.data, event_id=event.id, policy=policy, out=out)

    async def notice(uow: UnitOfWork, event: Event) -> None:
        assert isinstance(event.data, CallbackNoticeRequested)
        await on_notice(uow=uow, event=event.data, event_id=event.id, out=out)

    async def questionnaire(
        uow: UnitOfWork, event: Event, *, officer_kind: str, reason: str, to_party: bool = True
    ) -> None:
        assert isinstance(event.data, CallbackRef)
        await send_questionnaire(
            uow=uow,
            event=event.data,
            event_id=event.id,
            policy=policy,
            out=out,
            officer_kind=officer_kind,
            reason=reason,
            to_party=to_party,
        )

    async def expired(uow: UnitOfWork, event: Event) -> None:
        assert isinstance(event.data, CallbackExpired)
        # CONTRACT.md 4: the party gets the link when the attempts ran out; a deadline tells the officer only
        # (a party without consent already has the link from when the callback was scheduled).
        await questionnaire(
            uow,
            event,
            officer_kind="expired",
            reason=event.data.reason,
            to_party=event.data.reason == "attempts_exhausted",
        )

    async def scheduled(uow: UnitOfWork, event: Event) -> None:
        assert isinstance(event.data, CallbackScheduled)
        # A party without contact consent is never phoned: the questionnaire is their only way to answer.
        if event.data.channel == "questionnaire":
            await questionnaire(uow, event, officer_kind="no_consent", reason="no_consent")

    return {
        "loan.stage.changed": loan_stage,
        "callback.refused": refused,
        "callback.notice.requested": notice,
        "callback.expired": expired,
        "callback.scheduled": scheduled,
    }
