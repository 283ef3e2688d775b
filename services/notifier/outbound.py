"""Queueing notifications: one row per (source event, recipient, channel), personal data encrypted."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from sqlmodel import select

from services.notifier.messages import Composed, compose, find_party
from services.notifier.models import LoanContact, Notification
from shared.crypto import Cipher
from shared.db import UnitOfWork, utcnow

# Fixed namespace so a notification's id follows from (event, recipient, channel) on every replica.
_NS = uuid.UUID("6b2f1c4e-9a53-4d1e-8f0a-1c2d3e4f5a6b")


@dataclass(frozen=True)
class Outbound:
    """What handlers need to address people: the cipher, and whether email can be sent at all."""

    cipher: Cipher
    email_enabled: bool


def notification_id(*, source_event_id: str, recipient: str, channel: str) -> str:
    """The same (event, recipient, channel) always gives the same id."""
    return str(uuid.uuid5(_NS, f"{source_event_id}|{recipient}|{channel}"))


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
    channel: str,
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
    note = Notification(
        notification_id=notification_id(source_event_id=source_event_id, recipient=recipient, channel=channel),
        source_event_id=source_event_id,
        loan_id=loan_id,
        kind=kind,
        recipient=recipient,
        channel=channel,
        payload=json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
        status="pending",
        next_attempt_at=utcnow(),
        address_enc=sealed[0] if sealed else None,
        message_enc=sealed[1] if sealed else None,
    )
    uow.session.add(note)
    await uow.session.flush()
    return note


async def load_contacts(*, uow: UnitOfWork, cipher: Cipher, loan_id: str) -> dict[str, Any] | None:
    """The loan's officer and parties as last seen on loan.stage.v1, or None if not seen yet."""
    row = await uow.session.get(LoanContact, loan_id)
    return cipher.decrypt_json(row.contacts_enc) if row else None


async def notify_officer(
    *,
    uow: UnitOfWork,
    out: Outbound,
    source_event_id: str,
    kind: str,
    payload: dict[str, Any],
    contacts: dict[str, Any] | None,
) -> None:
    """The officer hears by webhook always (ids only), and by email when we have their address."""
    officer = (contacts or {}).get("officer") or {}
    officer_id = officer.get("id")
    # Without a known officer the webhook receiver routes by loan_id; never drop the notice.
    recipient = f"officer:{officer_id}" if officer_id else "officer"
    payload = {**payload, "officer_id": officer_id}
    common = dict(uow=uow, source_event_id=source_event_id, loan_id=payload["loan_id"], kind=kind, recipient=recipient)
    await queue_notification(**common, channel="webhook", payload=payload)  # type: ignore[arg-type]
    if out.email_enabled and contacts and officer.get("email"):
        composed = compose(kind=kind, channel="email", recipient=recipient, payload=payload, contacts=contacts)
        sealed = seal(out.cipher, composed) if composed else None
        await queue_notification(**common, channel="email", payload=payload, sealed=sealed)  # type: ignore[arg-type]


async def notify_party(
    *,
    uow: UnitOfWork,
    out: Outbound,
    source_event_id: str,
    kind: str,
    payload: dict[str, Any],
    contacts: dict[str, Any] | None,
    prefer_email: bool,
) -> None:
    """A party hears by email when preferred and possible, else by SMS (every party has a phone)."""
    recipient = f"party:{payload['party_id']}"
    party = find_party(contacts, payload["party_id"]) if contacts else None
    channel = "email" if prefer_email and out.email_enabled and party and party.get("email") else "sms"
    # Contacts may not have arrived yet (another topic): the delivery loop composes the message later.
    composed = compose(kind=kind, channel=channel, recipient=recipient, payload=payload, contacts=contacts or {})
    await queue_notification(
        uow=uow,
        source_event_id=source_event_id,
        loan_id=payload["loan_id"],
        kind=kind,
        recipient=recipient,
        channel=channel,
        payload=payload,
        sealed=seal(out.cipher, composed) if composed else None,
    )
