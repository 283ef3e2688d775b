"""The durable timer loop: fires notices, due calls and deadlines stored in the database."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlmodel import col, select

from services.scheduler import planner
from services.scheduler.callbacks import (
    AnyCallback,
    CallbackRow,
    People,
    add_timer,
    cancel_timers,
    expire,
    flush,
    publish,
    reach,
    ref,
    save,
    start_batch,
)
from services.scheduler.models import Callback, Timer
from services.scheduler.notices import Notices, PageLinks
from shared.claims import claim
from shared.crypto import Cipher
from shared.db import Database, UnitOfWork, among, is_transient, utcnow
from shared.events import CLOSED_STATES, CallbackRescheduled
from shared.metrics import NOTICES_LATE, TIMER_LATENESS, TIMERS_FIRED
from shared.policy import Policy
from shared.tracing import span, timer_attributes

log = structlog.get_logger(__name__)
RETRY_AFTER = timedelta(minutes=1)
FIRING_ORDER = {"notice": 0, "due": 1, "deadline": 2}  # within one claimed batch
MIN_PAUSE = 0.05
YIELD_EVERY = 20  # timers fired between two turns of the event loop


def late_notice(*, cb: AnyCallback, send_at: datetime, lead: timedelta) -> bool:
    """Whether a notice sent at `send_at` is later than planned and leaves its call less than the lead."""
    if send_at >= cb.due_at:
        return True
    # Slack: a timer a moment late must not undo a plan that knowingly gave a shorter lead.
    grace = min(timedelta(minutes=1), lead)
    return send_at - cb.notice_at > grace and cb.due_at - send_at < lead


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
        self.links = links
        self.notices = Notices(cipher=cipher, policy=policy, links=links)
        self.policy = policy  # when given, a timer that fires late is held to calling and quiet hours
        self.poll_seconds = poll_seconds
        self.batch = batch
        self._replanned: set[str] = set()  # callbacks whose call a late notice moved, in the batch in hand
        self._closing: set[str] | None = None  # closed in the batch in hand: their timers cancelled at its end
        self._notices: set[str] | None = None  # the batch's callbacks with a notice still to go out
        self._allowed: dict[str, bool] = {}  # by time zone: may a call go at the batch's `now`

    async def run(self) -> None:
        if self.policy is not None:  # the holiday calendar loads on first use (0.1 s): now, not in the first firing
            planner.is_calling_day(policy=self.policy, day=utcnow().date())
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
        try:
            rows = await self._pass(now, isolate=False)
        except Exception as exc:
            if is_transient(exc):
                raise
            # One broken timer (say, undecryptable contact details) must not stop the others: the batch
            # was rolled back; claim again and fire one by one, so that only the broken one is put back.
            log.warning("timer.batch_failed", error=type(exc).__name__)
            rows = await self._pass(now, isolate=True)
        for kind, fired in Counter(row.kind for row in rows).items():
            TIMERS_FIRED.labels("scheduler", kind).inc(fired)
        lateness = {kind: TIMER_LATENESS.labels("scheduler", kind) for kind in FIRING_ORDER}
        for row in rows:
            (lateness.get(row.kind) or TIMER_LATENESS.labels("scheduler", row.kind)).observe(
                max(0.0, (now - row.fire_at).total_seconds())
            )
        return len(rows)

    async def _pass(self, now: datetime, *, isolate: bool) -> list[sa.Row[Any]]:
        """Claim a batch and fire it in one transaction: set-based, or with a savepoint per timer (`isolate`)."""
        self._replanned.clear()
        self._allowed.clear()
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
            # UPDATE ... RETURNING gives rows in storage order, not the claim's: notices fire first, so a
            # callback's notice claimed with its call goes before it (a call never goes before its notice).
            rows.sort(key=lambda row: (FIRING_ORDER.get(row.kind, len(FIRING_ORDER)), row.fire_at))
            # One query for the batch's callbacks, not one per timer: bursts of due timers stay on time.
            ids = {row.callback_id for row in rows}
            chosen = among(callbacks.c.callback_id, ids, uow.dialect)
            by_id: dict[str, AnyCallback]
            if isolate:  # entities: a savepoint rolls back what a failing timer changed in them
                found = await uow.session.execute(select(Callback).where(chosen))
                by_id = {cb.callback_id: cb for cb in found.scalars()}
            else:  # rows, written back with one UPDATE by `flush`
                loaded = await uow.session.execute(sa.select(callbacks).where(chosen))
                by_id = {cb.callback_id: cb for cb in CallbackRow.loaded(loaded)}
            self._closing = None if isolate else set()
            self._notices = None if isolate else await self._pending_notices(uow, ids)
            if not isolate and rows:
                start_batch(uow)
                # Only notices and calls offer the page's slots: a batch of deadlines needs no busy days.
                paged = {row.callback_id for row in rows if row.kind != "deadline"}
                await self._load_people(uow, [cb for cid, cb in by_id.items() if cid in paged], now=now)
            for index, row in enumerate(rows):
                if index and index % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # CPU-bound: let the relay's and the consumer's replies in meanwhile
                # Each firing starts a trace of its own; the events it emits carry it on.
                with span(f"timer {row.kind}", attributes=timer_attributes(row.kind, row.callback_id)):
                    if isolate:
                        await self._fire_isolated(uow, row=row, cb=by_id.get(row.callback_id), now=now)
                    else:
                        await self._fire(uow, kind=row.kind, cb=by_id.get(row.callback_id), now=now)
            await flush(uow)  # the batch's rows, before its closed callbacks' timers (those too) are cancelled
            if self._closing:
                await cancel_timers(uow=uow, callback_id=self._closing)
            await uow.commit()
        return rows

    async def _fire_isolated(self, uow: UnitOfWork, *, row: sa.Row[Any], cb: AnyCallback | None, now: datetime) -> None:
        table = Timer.__table__  # type: ignore[attr-defined]
        try:
            async with uow.session.begin_nested():
                await self._fire(uow, kind=row.kind, cb=cb, now=now)
        except Exception as exc:
            if is_transient(exc):
                raise
            # Put back to try again later, and the log says which.
            log.error("timer.failed", timer_id=row.id, kind=row.kind, error=type(exc).__name__)
            await uow.session.execute(
                sa.update(table).where(table.c.id == row.id).values(fired_at=None, fire_at=now + RETRY_AFTER)
            )

    async def _pending_notices(self, uow: UnitOfWork, ids: set[str]) -> set[str]:
        """The batch's callbacks whose notice is still to go out: one query, not one per due timer."""
        if self.policy is None or not ids:
            return set()
        found = await uow.session.execute(
            select(Timer.callback_id).where(
                among(Timer.__table__.c.callback_id, ids, uow.dialect),  # type: ignore[attr-defined]
                col(Timer.kind) == "notice",
                col(Timer.fired_at).is_(None),
            )
        )
        return set(found.scalars())

    async def _load_people(self, uow: UnitOfWork, cbs: list[AnyCallback], *, now: datetime) -> None:
        """The batch's persons' calls and open callbacks, when the page's slots need their busy days."""
        if self.links is None or self.policy is None or not cbs:
            return
        persons = [(cb.party_id, cb.phone_index) for cb in cbs]
        end = max(cb.deadline for cb in cbs) + timedelta(days=1)
        await People.load(uow=uow, persons=persons, start=now - timedelta(days=1), end=end, known=cbs)

    async def _fire(self, uow: UnitOfWork, *, kind: str, cb: AnyCallback | None, now: datetime) -> None:
        if cb is None or cb.state in CLOSED_STATES:
            return
        if kind == "notice":
            if await self._notice_moved(uow, cb=cb, now=now):
                return
            await self.notices.send_notice(uow, cb=cb, now=now)
        elif kind == "due" and cb.state == "scheduled":
            if cb.callback_id in self._replanned:
                return  # claimed with its notice, which went out late and re-planned the call: a new timer follows
            if await self._notice_pending(uow, cb=cb):
                return  # never a call before its notice: the notice, now late, re-plans the call when it goes
            if self._due_moved(uow, cb=cb, now=now):
                return
            cb.state = "due"
            cb.updated_at = now
            save(uow, cb)
            publish(uow, cb, self.notices.due(cb, await self.notices.access(uow, cb=cb, now=now)))
        elif kind == "deadline":
            await expire(uow=uow, cb=cb, reason="deadline", now=now, cancel=self._closing is None)
            if self._closing is not None:
                self._closing.add(cb.callback_id)

    async def _notice_pending(self, uow: UnitOfWork, *, cb: AnyCallback) -> bool:
        """Whether the callback's advance notice is still to go out (and the policy asks for one)."""
        if self.policy is None or self.notices.treatment(cb).policy.notice.lead <= timedelta(0):
            return False
        if self._notices is not None:
            return cb.callback_id in self._notices
        pending = await uow.session.scalar(
            select(Timer.id).where(
                col(Timer.callback_id) == cb.callback_id, col(Timer.kind) == "notice", col(Timer.fired_at).is_(None)
            )
        )
        return pending is not None

    def _due_moved(self, uow: UnitOfWork, *, cb: AnyCallback, now: datetime) -> bool:
        """A due timer that fires outside calling hours (after an outage, say) waits for the next slot."""
        if self.policy is None:
            return False
        allowed = self._allowed.get(cb.timezone)
        if allowed is None:  # the same for every callback of the zone in the batch: worked out once
            allowed = self._allowed[cb.timezone] = planner.is_allowed(
                policy=self.policy, reach=reach(cb), at=now, use_window=False
            )
        if allowed:
            return False
        slot = planner.earliest_slot(policy=self.policy, reach=reach(cb), after=now, before=cb.deadline,
                                     use_window=False)  # fmt: skip
        if slot is None:
            return True  # no slot before the deadline: the deadline timer expires it
        cb.due_at, cb.updated_at = slot, now
        save(uow, cb)
        add_timer(uow, cb.callback_id, "due", slot)
        log.info("timer.deferred", callback_id=cb.callback_id, kind="due")
        return True

    async def _notice_moved(self, uow: UnitOfWork, *, cb: AnyCallback, now: datetime) -> bool:
        """A notice in quiet hours waits for them to end; one too late for its call re-plans the call."""
        if self.policy is None:
            return False
        lead = self.notices.treatment(cb).policy.notice.lead
        send_at = planner.notice_time(policy=self.policy, reach=reach(cb), at=now)
        if send_at >= cb.due_at > now and not late_notice(cb=cb, send_at=now, lead=lead):
            # Quiet hours that last until the call, on time: the planner's "at once" notice goes now,
            # rather than the call going without one.
            return False
        if lead <= timedelta(0):
            if now >= cb.due_at:
                log.info("notice.skipped", callback_id=cb.callback_id, reason="no_lead_and_call_due")
                return True
        elif late_notice(cb=cb, send_at=send_at, lead=lead):
            await self._replan_after_notice(uow, cb=cb, send_at=send_at, lead=lead, now=now)
        if send_at <= now:
            return False
        add_timer(uow, cb.callback_id, "notice", send_at)
        if self._notices is not None:
            self._notices.add(cb.callback_id)
        return True

    async def _replan_after_notice(
        self, uow: UnitOfWork, *, cb: AnyCallback, send_at: datetime, lead: timedelta, now: datetime
    ) -> None:
        """Move the call to a full lead after the notice that is going out late, inside calling hours."""
        assert self.policy is not None
        # A full lead if the deadline allows; else the first slot after the notice: never a call before it.
        slot = planner.earliest_slot(
            policy=self.policy, reach=reach(cb), after=send_at + lead, before=cb.deadline
        ) or planner.earliest_slot(policy=self.policy, reach=reach(cb), after=send_at, before=cb.deadline)
        if slot is None:
            return  # no slot before the deadline: the deadline timer expires the callback
        late_by = (send_at - cb.notice_at).total_seconds()
        cb.notice_at, cb.due_at, cb.updated_at = send_at, slot, now
        save(uow, cb)
        self._replanned.add(cb.callback_id)
        await flush(uow)  # a due timer added earlier in the batch is cancelled too
        await cancel_timers(uow=uow, callback_id=cb.callback_id, kinds=("due",))
        add_timer(uow, cb.callback_id, "due", slot)
        publish(uow, cb, CallbackRescheduled(**ref(cb), due_at=slot, reason="late_notice"))
        NOTICES_LATE.labels("scheduler").inc()
        log.warning("notice.late", callback_id=cb.callback_id, late_by_s=round(late_by, 1), due_at=slot.isoformat())
