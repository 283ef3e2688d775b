"""The durable timer loop: fires notices, due calls and deadlines stored in the database."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog
from sqlmodel import col, select

from services.scheduler import planner
from services.scheduler.callbacks import add_timer, busy_days, expire, publish, reach, ref
from services.scheduler.models import Callback, Timer
from shared import labels, links
from shared.claims import claim
from shared.crypto import Cipher
from shared.db import Database, UnitOfWork, is_transient, utcnow
from shared.events import CLOSED_STATES, CallbackDue, CallbackNoticeRequested, PartyAccess
from shared.metrics import TIMER_LATENESS, TIMERS_FIRED
from shared.policy import Policy
from shared.tracing import span, timer_attributes

log = structlog.get_logger(__name__)
RETRY_AFTER = timedelta(minutes=1)
MIN_PAUSE = 0.05
SLOT_LEAD = timedelta(hours=1)  # a slot offered on the party's page starts at least this far ahead


@dataclass(frozen=True)
class PageLinks:
    """How the party's page links are made: the signing secret and the public base URL."""

    secret: bytes
    public_url: str


class TimerLoop:
    """Claims due timers (never before their time) and turns them into lifecycle events."""

    def __init__(
        self,
        *,
        db: Database,
        cipher: Cipher,
        poll_seconds: float,
        policy: Policy | None = None,
        batch: int = 200,
        links: PageLinks | None = None,
    ) -> None:
        self.db = db
        self.links = links  # when given (and the policy allows), the personal events carry the page link
        self.cipher = cipher
        self.policy = policy  # when given, a timer that fires late is held to calling and quiet hours
        self.poll_seconds = poll_seconds
        self.batch = batch

    async def run(self) -> None:
        while True:
            fired = await self.fire_due()
            if fired >= self.batch:
                continue
            # A floor: timers locked by another replica or a consumer are due but not claimable yet.
            await asyncio.sleep(max(MIN_PAUSE, await self._pause()))

    async def _pause(self) -> float:
        # Sleep to the next timer if it is sooner than the poll interval, so timers fire on time.
        async with self.db.uow() as uow:
            nxt = await uow.session.scalar(sa.select(sa.func.min(Timer.fire_at)).where(col(Timer.fired_at).is_(None)))
        if nxt is None:
            return self.poll_seconds
        if nxt.tzinfo is None:  # func.min bypasses the column type on SQLite
            nxt = datetime.fromisoformat(str(nxt)).replace(tzinfo=utcnow().tzinfo)
        return max(0.0, min(self.poll_seconds, (nxt - utcnow()).total_seconds()))

    async def fire_due(self, now: datetime | None = None) -> int:
        """Fire every timer whose time has come (by `now`, the clock unless a test sets it); returns how many."""
        now = now or utcnow()
        table = Timer.__table__  # type: ignore[attr-defined]
        callbacks = Callback.__table__  # type: ignore[attr-defined]
        async with self.db.uow() as uow:
            rows = await claim(
                uow,
                table,
                where=[table.c.fired_at.is_(None), table.c.fire_at <= now],
                order_by=table.c.fire_at,
                limit=self.batch,
                values={"fired_at": now},
                # A timer is taken only with its callback's row, which an outcome or the other
                # timers of that callback (on another replica) may hold.
                joined=(callbacks, callbacks.c.callback_id == table.c.callback_id),
            )
            # One query for the batch's callbacks, not one per timer: bursts of due timers stay on time.
            ids = {row.callback_id for row in rows}
            found = await uow.session.execute(select(Callback).where(col(Callback.callback_id).in_(ids)))
            by_id = {cb.callback_id: cb for cb in found.scalars()}
            for row in rows:
                try:
                    # Each firing starts a trace of its own; the events it emits carry it on.
                    with span(f"timer {row.kind}", attributes=timer_attributes(row.kind, row.callback_id)):
                        async with uow.session.begin_nested():
                            await self._fire(uow, kind=row.kind, cb=by_id.get(row.callback_id), now=now)
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    # One broken timer (say, undecryptable contact details) must not stop the others:
                    # it is put back to try again later, and the log says which.
                    log.error("timer.failed", timer_id=row.id, kind=row.kind, error=type(exc).__name__)
                    await uow.session.execute(
                        sa.update(table).where(table.c.id == row.id).values(fired_at=None, fire_at=now + RETRY_AFTER)
                    )
            await uow.commit()
        for row in rows:
            TIMERS_FIRED.labels("scheduler", row.kind).inc()
            TIMER_LATENESS.labels("scheduler", row.kind).observe(max(0.0, (now - row.fire_at).total_seconds()))
        return len(rows)

    async def _fire(self, uow: UnitOfWork, *, kind: str, cb: Callback | None, now: datetime) -> None:
        if cb is None or cb.state in CLOSED_STATES:
            return
        if kind == "notice":
            if self._notice_moved(uow, cb=cb, now=now):
                return
            publish(uow, cb, self._notice(cb, await self._access(uow, cb=cb, now=now)))
        elif kind == "due" and cb.state == "scheduled":
            if self._due_moved(uow, cb=cb, now=now):
                return
            cb.state = "due"
            cb.updated_at = now
            uow.session.add(cb)
            publish(uow, cb, self._due(cb, await self._access(uow, cb=cb, now=now)))
        elif kind == "deadline":
            await expire(uow=uow, cb=cb, reason="deadline", now=now)

    def _due_moved(self, uow: UnitOfWork, *, cb: Callback, now: datetime) -> bool:
        """A due timer that fires outside calling hours (after an outage, say) waits for the next slot."""
        if self.policy is None or planner.is_allowed(policy=self.policy, reach=reach(cb), at=now, use_window=False):
            return False
        slot = planner.earliest_slot(policy=self.policy, reach=reach(cb), after=now, before=cb.deadline,
                                     use_window=False)  # fmt: skip
        if slot is None:
            return True  # no slot before the deadline: the deadline timer expires it
        cb.due_at, cb.updated_at = slot, now
        uow.session.add(cb)
        add_timer(uow, cb.callback_id, "due", slot)
        log.info("timer.deferred", callback_id=cb.callback_id, kind="due")
        return True

    def _notice_moved(self, uow: UnitOfWork, *, cb: Callback, now: datetime) -> bool:
        """A notice in quiet hours waits them out; it is dropped once its call is due."""
        if self.policy is None:
            return False
        if now >= cb.due_at:
            return True
        wake = planner.notice_time(policy=self.policy, reach=reach(cb), at=now)
        if wake <= now or wake >= cb.due_at:
            # Quiet hours that last until the call: the planner's "at once" rule, a notice now
            # rather than a call with none.
            return False
        add_timer(uow, cb.callback_id, "notice", wake)
        return True

    async def _access(self, uow: UnitOfWork, *, cb: Callback, now: datetime) -> PartyAccess:
        """The caller code, and the party's page link with the slots it may offer."""
        if cb.caller_code_enc is None:  # a callback opened before caller codes existed
            cb.caller_code_enc = self.cipher.encrypt(links.caller_code())
            uow.session.add(cb)
        code = self.cipher.decrypt(cb.caller_code_enc)
        if self.links is None or self.policy is None or not self.policy.self_service.enabled:
            return PartyAccess(caller_code=code, deadline=cb.deadline, timezone=cb.timezone)
        token = links.sign(secret=self.links.secret, callback_id=cb.callback_id, expires_at=cb.deadline)
        busy = await busy_days(
            uow=uow, policy=self.policy, party_id=cb.party_id, phone_index=cb.phone_index, timezone=cb.timezone,
            exclude=cb.callback_id, start=now, end=cb.deadline,
        )  # fmt: skip
        slots = planner.offer_slots(
            policy=self.policy, reach=reach(cb), after=now + SLOT_LEAD, deadline=cb.deadline, busy_days=busy,
            count=self.policy.self_service.slots_offered,
        )  # fmt: skip
        return PartyAccess(
            caller_code=code,
            self_service_url=links.page_url(public_url=self.links.public_url, token=token),
            deadline=cb.deadline,
            timezone=cb.timezone,
            slots=slots,
        )

    def _notice(self, cb: Callback, access: PartyAccess | None = None) -> CallbackNoticeRequested:
        # Data only: the notifier's notice template writes the text the party reads.
        contact = self.cipher.decrypt_json(cb.contact_enc)
        return CallbackNoticeRequested(
            **ref(cb),
            **(access or PartyAccess()).model_dump(),
            channel="sms",
            due_at=cb.due_at,
            purpose=labels.purpose(stage=cb.stage, language=cb.language),
            topics=labels.topics(items=labels.VERIFICATION_ITEMS, language=cb.language),
            language=cb.language,
            name=contact["name"],
            phone=contact["phone"],
            email=contact.get("email"),
        )

    def _due(self, cb: Callback, access: PartyAccess | None = None) -> CallbackDue:
        contact = self.cipher.decrypt_json(cb.contact_enc)
        return CallbackDue(
            **ref(cb),
            **(access or PartyAccess()).model_dump(exclude={"deadline", "timezone"}),
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
