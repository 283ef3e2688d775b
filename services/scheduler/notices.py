"""What the personal events tell a party: the advance notice, the due call, the caller code and the page link.

Both the timer loop and ingest build them here: ingest sends a notice planned for "at once" in its own
transaction (a timer would only fire it a moment later), the timer loop sends the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from services.scheduler import experiments, planner
from services.scheduler.callbacks import AnyCallback, busy_days, publish, reach, ref, save
from shared import labels, links
from shared.crypto import Cipher
from shared.db import UnitOfWork
from shared.events import CallbackDue, CallbackNoticeRequested
from shared.policy import Policy

SLOT_LEAD = timedelta(hours=1)  # a slot offered on the party's page starts at least this far ahead
# PartyAccess's fields as keywords of the personal event: the event is validated once, with them.
Access = dict[str, Any]


@dataclass(frozen=True)
class PageLinks:
    """How the party's page links are made: the signing secret and the public base URL."""

    secret: bytes
    public_url: str


class Notices:
    """Builds a callback's personal events under its experiment arms' policy."""

    def __init__(self, *, cipher: Cipher, policy: Policy | None = None, links: PageLinks | None = None) -> None:
        self.cipher = cipher
        self.policy = policy
        self.links = links  # when given (and the policy allows), the personal events carry the page link
        self._treatments: dict[str, experiments.Treatment] = {}  # by the callback's stored arms

    def treatment(self, cb: AnyCallback) -> experiments.Treatment:
        """The policy as the callback's experiment arms change it."""
        assert self.policy is not None
        found = self._treatments.get(cb.arms)
        if found is None:  # a few arms combinations, and the policy is the service's: worked out once each
            found = self._treatments[cb.arms] = experiments.treatment(
                policy=self.policy, arms=experiments.parse(cb.arms)
            )
        return found

    def at_once(self, cb: AnyCallback, *, now: datetime) -> bool:
        """Whether a new callback's plan sends its notice now: a lead asked for, the notice not in quiet
        hours (the planner would have moved it) and the call still ahead."""
        if self.policy is None or self.treatment(cb).policy.notice.lead <= timedelta(0):
            return False
        return cb.notice_at <= now < cb.due_at

    async def send_notice(self, uow: UnitOfWork, *, cb: AnyCallback, now: datetime) -> None:
        publish(uow, cb, self.notice(cb, await self.access(uow, cb=cb, now=now)))

    async def access(self, uow: UnitOfWork, *, cb: AnyCallback, now: datetime) -> Access:
        """The caller code, and the party's page link with the slots it may offer, unless the arm turns them off."""
        if cb.caller_code_enc is None:  # a callback opened before caller codes existed
            cb.caller_code_enc = self.cipher.encrypt(links.caller_code())
            save(uow, cb)
        treated = self.treatment(cb) if self.policy is not None else None
        code = self.cipher.decrypt(cb.caller_code_enc) if treated is None or treated.caller_code else None
        if self.links is None or treated is None or not treated.policy.self_service.enabled:
            return {"caller_code": code}
        token = links.sign(secret=self.links.secret, callback_id=cb.callback_id, expires_at=cb.deadline)
        busy = await busy_days(
            uow=uow, policy=treated.policy, party_id=cb.party_id, phone_index=cb.phone_index, timezone=cb.timezone,
            exclude=cb.callback_id, start=now, end=cb.deadline,
        )  # fmt: skip
        slots = planner.offer_slots(
            policy=treated.policy, reach=reach(cb), after=now + SLOT_LEAD, deadline=cb.deadline, busy_days=busy,
            count=treated.policy.self_service.slots_offered,
        )  # fmt: skip
        url = links.page_url(public_url=self.links.public_url, token=token)
        return {"caller_code": code, "self_service_url": url, "slots": slots}

    def notice(self, cb: AnyCallback, access: Access | None = None) -> CallbackNoticeRequested:
        # Data only: the notifier's notice template writes the text the party reads.
        contact = self.cipher.decrypt_json(cb.contact_enc)
        placed = {} if access is None else {**access, "deadline": cb.deadline, "timezone": cb.timezone}
        return CallbackNoticeRequested(
            **ref(cb),
            **placed,
            channel="sms",
            due_at=cb.due_at,
            purpose=labels.purpose(stage=cb.stage, language=cb.language),
            topics=labels.topics(items=labels.VERIFICATION_ITEMS, language=cb.language),
            language=cb.language,
            name=contact["name"],
            phone=contact["phone"],
            email=contact.get("email"),
        )

    def due(self, cb: AnyCallback, access: Access | None = None) -> CallbackDue:
        contact = self.cipher.decrypt_json(cb.contact_enc)
        return CallbackDue(
            **ref(cb),
            **(access or {}),
            due_at=cb.due_at,
            deadline=cb.deadline,
            name=contact["name"],
            phone=contact["phone"],
            email=contact.get("email"),
            timezone=cb.timezone,
            language=cb.language,
            purpose=labels.purpose(stage=cb.stage, language=cb.language),
            verification_items=list(labels.VERIFICATION_ITEMS),
        )
