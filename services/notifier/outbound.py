"""Queueing notifications: one row per (source event, recipient, channel), personal data encrypted."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from services.notifier.contacts import Contacts, Person, open_contacts, seal_contacts
from services.notifier.messages import Composed, compose, find_party
from services.notifier.models import Channel, LoanContact, Notification, OfficerWait
from shared.crypto import Cipher
from shared.db import UnitOfWork, insert_new, utcnow
from shared.events import LoanStageChanged
from shared.tracing import trace_context

# The delivery loop's wake-up: a committed notification is delivered now, not at the next poll.
DELIVERY = "delivery"

# Fixed namespace so a notification's id follows from (event, recipient, channel) on every replica.
NAMESPACE = uuid.UUID("6b2f1c4e-9a53-4d1e-8f0a-1c2d3e4f5a6b")


@dataclass(frozen=True)
class Outbound:
    """What handlers need to address people: the cipher, and whether email can be sent at all."""

    cipher: Cipher
    email_enabled: bool


def notification_id(*, source_event_id: str, recipient: str, channel: str) -> str:
    """The same (event, recipient, channel) always gives the same id."""
    return str(uuid.uuid5(NAMESPACE, f"{source_event_id}|{recipient}|{channel}"))


def seal(cipher: Cipher, composed: Composed) -> tuple[str, str]:
    """Encrypted address and message of a composed email or SMS."""
    return cipher.encrypt(composed.address), cipher.encrypt_json(asdict(composed.message))


async def queue_notification(
    *,
    uow: UnitOfWork,
    source_event_id: str,
    loan_id: str,
    kind: str,
    recipient: str,
    channel: Channel,
    payload: dict[str, Any],
    sealed: tuple[str, str] | None = None,
) -> Notification | None:
    """Insert a pending notification unless this event already made one for this recipient and channel."""
    existing = await uow.session.execute(
        select(Notification).where(
            Notification.source_event_id == source_event_id,
            Notification.recipient == recipient,
            Notification.channel == channel,
        )
    )
    if existing.scalar_one_or_none() is not None:
        return None
    traced = trace_context()
    note = Notification(
        notification_id=notification_id(source_event_id=source_event_id, recipient=recipient, channel=channel),
        source_event_id=source_event_id,
        loan_id=loan_id,
        kind=kind,
        recipient=recipient,
        channel=channel,
        payload=_json(payload),
        status="pending",
        next_attempt_at=utcnow(),
        address_enc=sealed[0] if sealed else None,
        message_enc=sealed[1] if sealed else None,
        # The consumer's span of the event that asks for this: the delivery continues its trace.
        traceparent=traced.get("traceparent"),
        tracestate=traced.get("tracestate"),
    )
    uow.session.add(note)
    await uow.session.flush()
    uow.wake(DELIVERY)
    return note


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


async def load_contacts(*, uow: UnitOfWork, cipher: Cipher, loan_id: str) -> Contacts | None:
    """The loan's officer and parties as last seen on loan.stage.v1, or None if not seen yet."""
    row = await uow.session.get(LoanContact, loan_id)
    return open_contacts(cipher, row.contacts_enc) if row else None


@dataclass(frozen=True)
class Route:
    recipient: str  # `officer:ID`, `party:ID` or a role: never an address
    channel: Channel


def officer_id(contacts: Contacts | None) -> str | None:
    """The loan officer's id, when the loan's contacts are known."""
    officer: Person = (contacts or {}).get("officer") or {}
    return officer.get("id")


def officer_routes(*, out: Outbound, contacts: Contacts | None) -> list[Route]:
    """The officer hears by webhook always (ids only), and by email when we have their address."""
    ident = officer_id(contacts)
    # Without a known officer the webhook receiver routes by loan_id; never drop the notice.
    recipient = f"officer:{ident}" if ident else "officer"
    has_email = out.email_enabled and officer_email_known(contacts)
    return [Route(recipient, "webhook")] + ([Route(recipient, "email")] if has_email else [])


def officer_email_known(contacts: Contacts | None) -> bool:
    """Whether the loan's contacts give the officer an email address."""
    return bool(((contacts or {}).get("officer") or {}).get("email"))


async def _lock_waits(uow: UnitOfWork, *, exclusive: bool) -> None:
    """Order remembering an officer notification against learning the officer's email (PostgreSQL).

    Remembering (rare) takes the lock alone, stage events share it: a stage event then sees every wait
    committed before its check, and a refusal that waited sees the contacts committed meanwhile.
    SQLite needs nothing: BEGIN IMMEDIATE already serialises writers.
    """
    if uow.dialect != "postgresql":
        return
    fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    await uow.session.execute(sa.text(f"SELECT {fn}(hashtext(:k))"), {"k": f"officer_wait:{uow.db.schema}"})


async def officer_contacts(*, uow: UnitOfWork, out: Outbound, loan_id: str) -> Contacts | None:
    """The loan's contacts for an officer notification; read again under the lock when the email is missing."""
    contacts = await load_contacts(uow=uow, cipher=out.cipher, loan_id=loan_id)
    if not out.email_enabled or officer_email_known(contacts):
        return contacts
    await _lock_waits(uow, exclusive=True)
    return await load_contacts(uow=uow, cipher=out.cipher, loan_id=loan_id)


async def notify_officer(
    *, uow: UnitOfWork, out: Outbound, source_event_id: str, kind: str, payload: dict[str, Any],
    contacts: Contacts | None,
) -> None:  # fmt: skip
    """Queue the officer's webhook, and their email now or, while their address is unknown, when it arrives.

    `contacts` come from officer_contacts (which holds the lock a remembered notification needs).
    """
    routes = officer_routes(out=out, contacts=contacts)
    await notify(
        uow=uow, out=out, source_event_id=source_event_id, kind=kind, payload=payload, contacts=contacts,
        routes=routes,
    )  # fmt: skip
    if out.email_enabled and not any(r.channel == "email" for r in routes):
        wait = OfficerWait(
            source_event_id=source_event_id, loan_id=payload["loan_id"], kind=kind, payload=_json(payload)
        )
        await uow.session.execute(insert_new(OfficerWait.__table__, uow.dialect).values(**wait.model_dump()))  # type: ignore[attr-defined]


async def release_waits(*, uow: UnitOfWork, out: Outbound, loan_id: str, contacts: Contacts) -> int:
    """Queue the officer's email for each notification that waited for it, once; returns how many."""
    ident = officer_id(contacts)
    if not (out.email_enabled and ident and officer_email_known(contacts)):
        return 0
    await _lock_waits(uow, exclusive=False)
    # Locked rows: a second stage event of the loan on another replica waits, then finds them gone.
    query = select(OfficerWait).where(col(OfficerWait.loan_id) == loan_id).with_for_update()
    waits = list((await uow.session.execute(query)).scalars())
    if not waits:
        return 0
    for wait in waits:
        payload = {**json.loads(wait.payload), "officer_id": ident}
        await notify(
            uow=uow, out=out, source_event_id=wait.source_event_id, kind=wait.kind, payload=payload,
            contacts=contacts, routes=[Route(f"officer:{ident}", "email")],
        )  # fmt: skip
    # Deleted now, not at commit: a later stage event of the same batch must not find them again.
    gone = [w.source_event_id for w in waits]
    await uow.session.execute(sa.delete(OfficerWait).where(col(OfficerWait.source_event_id).in_(gone)))
    return len(waits)


def party_route(*, out: Outbound, contacts: Contacts | None, party_id: str, prefer_email: bool) -> Route:
    """A party hears by email when preferred and possible, else by SMS (every party has a phone)."""
    party: Person = find_party(contacts or {}, party_id) or {}
    email = prefer_email and out.email_enabled and bool(party.get("email"))
    return Route(f"party:{party_id}", "email" if email else "sms")


async def notify(
    *,
    uow: UnitOfWork,
    out: Outbound,
    source_event_id: str,
    kind: str,
    payload: dict[str, Any],
    contacts: Contacts | None,
    routes: list[Route],
    private: dict[str, Any] | None = None,
) -> None:
    """Queue one notification per route; an email or SMS is addressed and written now if the contact is known.

    `private` adds to the text a person reads (sealed with it) what the stored payload must not hold.
    """
    for route in routes:
        composed = None
        if route.channel != "webhook":
            # Contacts may not have arrived yet (another topic): then the delivery loop composes it later.
            composed = compose(
                kind=kind, channel=route.channel, recipient=route.recipient, payload={**payload, **(private or {})},
                contacts=contacts or {},
            )  # fmt: skip
        await queue_notification(
            uow=uow,
            source_event_id=source_event_id,
            loan_id=payload["loan_id"],
            kind=kind,
            recipient=route.recipient,
            channel=route.channel,
            payload=payload,
            sealed=seal(out.cipher, composed) if composed else None,
        )


async def keep_contacts(*, uow: UnitOfWork, event: LoanStageChanged, out: Outbound) -> LoanContact:
    """Keep the latest officer and party contacts of a loan, encrypted; send the officer emails that waited."""
    contacts = Contacts(
        officer=Person(
            id=event.officer.id, name=event.officer.name, phone=event.officer.phone, email=event.officer.email
        ),
        parties=[
            Person(
                party_id=p.party_id, role=p.role, name=p.name, phone=p.phone, email=p.email, language=p.language,
                timezone=p.timezone,
            )
            for p in event.parties
        ],
    )  # fmt: skip
    row = await uow.session.get(LoanContact, event.loan_id)
    if row is None:
        row = LoanContact(
            loan_id=event.loan_id, branch_id=event.branch_id, officer_id=event.officer.id, contacts_enc=""
        )
    row.branch_id = event.branch_id
    row.officer_id = event.officer.id
    row.contacts_enc = seal_contacts(out.cipher, contacts)
    row.updated_at = utcnow()
    uow.session.add(row)
    # Flush so a second event for the loan in the same batch finds this row.
    await uow.session.flush()
    await release_waits(uow=uow, out=out, loan_id=event.loan_id, contacts=contacts)
    return row
