"""The callback rules: open callbacks for a loan's stage, cancel them, and close, retry, move or expire them."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import col, select

from services.scheduler import experiments, planner
from services.scheduler.models import Callback, CallbackEvent, LoanStage, PersonCall, Timer, TimerKind
from shared import labels, links
from shared.crypto import Cipher
from shared.db import RowBuffer, UnitOfWork, among, utcnow
from shared.errors import Rejected
from shared.events import (
    CLOSED_STATES,
    CallbackCancelled,
    CallbackExpired,
    CallbackFields,
    CallbackOutcomeRecorded,
    CallbackRef,
    CallbackRescheduled,
    CallbackScheduled,
    CallbackState,
    CancelReason,
    ExpiryReason,
    LoanStageChanged,
    RescheduleReason,
    Role,
    Stage,
    Window,
)
from shared.outbox import enqueue
from shared.policy import Policy

if TYPE_CHECKING:  # notices builds on this module's rules
    from services.scheduler.notices import Notices

CANCEL_REASON: dict[str, CancelReason] = {"rejected": "loan_rejected", "withdrawn": "loan_withdrawn"}
OPEN_STATES = ("scheduled", "due")
# What a timeline line may show: ids, states, times and reasons; never names, phones or emails.
TIMELINE_FIELDS = {
    "state", "attempt", "due_at", "deadline", "notice_at", "reason", "channel", "flags",
    "disposition", "reason_code", "agent_id", "attempt_id",
}  # fmt: skip


def ref(cb: AnyCallback) -> CallbackFields:
    """The fields every callback event carries."""
    return CallbackFields(
        loan_id=cb.loan_id, callback_id=cb.callback_id, party_id=cb.party_id, role=cb.role, stage=cb.stage,
        branch_id=cb.branch_id, attempt=cb.attempt, state=cb.state,
    )  # fmt: skip


def reach(cb: AnyCallback) -> planner.Reach:
    """Where and when the callback's party may be phoned."""
    window = Window(start=cb.window_start, end=cb.window_end) if cb.window_start and cb.window_end else None
    return planner.Reach(timezone=cb.timezone, window=window)


def flags_of(cb: AnyCallback) -> list[str]:
    return [f for f in cb.flags.split(",") if f]


def add_flag(cb: AnyCallback, flag: str) -> None:
    if flag not in flags_of(cb):
        cb.flags = ",".join([*flags_of(cb), flag])


@dataclass(slots=True)
class CallbackRow:
    """A callback as a plain row: one a batch opens (INSERTed with the batch's rows) or one it loaded
    (its changes UPDATEd with them, see `save`). An ORM object costs more than the row's write.

    It has the attributes the rules read (`ref`, `flags_of`, `reach`, busy days, a loan's open callbacks).
    """

    callback_id: str
    loan_id: str
    stage: Stage
    branch_id: str
    party_id: str
    role: Role
    state: CallbackState
    contact_enc: str
    caller_code_enc: str | None
    phone_index: str
    timezone: str
    language: str
    contact_consent: bool
    due_at: datetime
    deadline: datetime
    notice_at: datetime
    flags: str
    window_start: str | None
    window_end: str | None
    arms: str
    created_at: datetime
    updated_at: datetime
    attempt: int = 1
    calls_made: int = 0
    cancel_note_enc: str | None = None
    closed_at: datetime | None = None
    seq: int | None = None  # the table's, once written

    def row(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__ if name != "seq"}

    @classmethod
    def loaded(cls, result: sa.Result[Any]) -> Iterator[CallbackRow]:
        """A result of the table's rows, each by a dict of the names taken once (`**row._mapping` and
        `row._fields` each cost tens of µs a row)."""
        names = tuple(result.keys())
        for row in result:
            yield cls(**dict(zip(names, row, strict=True)))


@dataclass(slots=True)
class StageRow:
    """A loan's stage in a batch: inserted (a new loan) or written back by key when the batch flushes."""

    loan_id: str
    stage: Stage
    changed_at: datetime

    def row(self) -> dict[str, object]:
        return {"loan_id": self.loan_id, "stage": self.stage, "changed_at": self.changed_at}


# A callback as the rules read it: an entity of the session, or a row of a batch.
AnyCallback = Callback | CallbackRow

CALLBACKS: sa.Table = Callback.__table__  # type: ignore[attr-defined]
TIMERS: sa.Table = Timer.__table__  # type: ignore[attr-defined]
TIMELINE: sa.Table = CallbackEvent.__table__  # type: ignore[attr-defined]
LOAN_STAGES: sa.Table = LoanStage.__table__  # type: ignore[attr-defined]
# What the rules may change in a callback row: written back by key when a batch flushes.
CHANGEABLE = ("callback_id", "state", "attempt", "calls_made", "due_at", "notice_at", "deadline", "flags",
              "caller_code_enc", "cancel_note_enc", "updated_at", "closed_at")  # fmt: skip
BATCH = "scheduler.rows"  # the session's RowBuffer while a batch (a poll's loans, a pass of timers) runs


def batch_rows(uow: UnitOfWork) -> RowBuffer | None:
    """The running batch's rows, written by `flush`: nothing in a batch reads them back before that."""
    return RowBuffer.of(uow.session.sync_session, BATCH)


def start_batch(uow: UnitOfWork) -> RowBuffer:
    return RowBuffer.start(uow.session.sync_session, BATCH)


def save(uow: UnitOfWork, cb: AnyCallback) -> None:
    """Have the unit of work write the callback's changes: an entity by the session, a row by the batch."""
    if isinstance(cb, Callback):
        uow.session.add(cb)
        return
    rows = batch_rows(uow)
    if rows is None:
        raise RuntimeError(f"callback {cb.callback_id} is a row, changed outside its batch")
    if cb.seq is not None:  # a new one is written whole by its INSERT, as it is when the batch flushes
        rows.update(CALLBACKS, cb, key="callback_id", columns=CHANGEABLE)


def forget(uow: UnitOfWork) -> None:
    """Drop what the batch loaded (People, Loans): the rules read the tables again (after a `flush`)."""
    for key in (People.KEY, Loans.KEY):
        uow.session.info.pop(key, None)


async def flush(uow: UnitOfWork) -> None:
    """Write what the unit of work holds so far (ORM objects and a batch's rows), before reading it back."""
    rows = batch_rows(uow)
    if rows is not None:
        for statement, params in rows.drain(uow.dialect):
            await uow.session.execute(statement, params)
    await uow.session.flush()


def note(uow: UnitOfWork, *, callback_id: str, data: CallbackRef, at: datetime | None = None) -> None:
    """Add a line to the callback's timeline."""
    at = at or utcnow()
    detail = data.model_dump_json(include=TIMELINE_FIELDS)
    rows = batch_rows(uow)
    if rows is not None:
        rows.insert(TIMELINE, {"callback_id": callback_id, "type": data.event_type, "at": at, "detail": detail})
    else:
        uow.session.add(CallbackEvent(callback_id=callback_id, type=data.event_type, at=at, detail=detail))


def publish(uow: UnitOfWork, cb: AnyCallback, data: CallbackRef) -> None:
    """Emit a lifecycle event through the outbox and note it on the callback's timeline."""
    enqueue(uow, data, key=cb.loan_id)
    note(uow, callback_id=cb.callback_id, data=data)


async def open_callbacks(*, uow: UnitOfWork, loan_id: str) -> list[Callback]:
    """The loan's open callbacks, their rows locked (in id order) until the transaction ends."""
    await flush(uow)  # a batch's new callbacks are rows until then
    query = (
        select(Callback)
        .where(Callback.loan_id == loan_id, col(Callback.state).not_in(CLOSED_STATES))
        .order_by(col(Callback.callback_id))
    )
    if uow.dialect == "postgresql":
        query = query.with_for_update()
    return list((await uow.session.execute(query)).scalars())


async def cancel_timers(
    *, uow: UnitOfWork, callback_id: str | Iterable[str], kinds: tuple[TimerKind, ...] | None = None
) -> None:
    """Cancel the pending timers of a callback, or of several at once."""
    ids = [callback_id] if isinstance(callback_id, str) else list(callback_id)
    query = sa.update(Timer).where(col(Timer.callback_id).in_(ids), col(Timer.fired_at).is_(None))
    if kinds:
        query = query.where(col(Timer.kind).in_(kinds))
    await uow.session.execute(query.values(fired_at=utcnow(), cancelled=True))


def add_timer(uow: UnitOfWork, callback_id: str, kind: TimerKind, fire_at: datetime) -> None:
    rows = batch_rows(uow)
    if rows is not None:
        rows.insert(
            TIMERS, {"callback_id": callback_id, "kind": kind, "fire_at": fire_at, "fired_at": None, "cancelled": False}
        )
    else:
        uow.session.add(Timer(callback_id=callback_id, kind=kind, fire_at=fire_at))


def _busy(*, policy: Policy, timezone: str, made: Iterable[date], booked: Iterable[datetime]) -> frozenset[date]:
    """The days that hold the daily cap, from the calls made and the open callbacks' due times."""
    days = Counter(made)
    days.update(planner.local_day(at=due, timezone=timezone) for due in booked)
    return frozenset(d for d, n in days.items() if n >= policy.attempts.max_calls_per_person_per_day)


async def busy_days(
    *, uow: UnitOfWork, policy: Policy, party_id: str, phone_index: str, timezone: str,
    exclude: str | None, start: datetime, end: datetime,
) -> frozenset[date]:  # fmt: skip
    """The person's local days between start and end that already hold their daily cap of calls.

    A person is matched by party id or by phone: calls made (from outcomes) and calls booked
    (open callbacks of theirs due that day) both count. Read from the batch's People when it holds them.
    """
    people = People.of(uow)
    if people is not None and people.covers(start=start, end=end):
        return people.busy_days(
            policy=policy, party_id=party_id, phone_index=phone_index, timezone=timezone, exclude=exclude,
            start=start, end=end,
        )  # fmt: skip
    await flush(uow)  # the batch's new and moved callbacks count
    first, last = (planner.local_day(at=t, timezone=timezone) for t in (start, end))
    person = sa.or_(col(PersonCall.party_id) == party_id, col(PersonCall.phone_index) == phone_index)
    made = await uow.session.execute(
        select(col(PersonCall.local_day)).where(person, col(PersonCall.local_day).between(first, last))
    )
    booked = await uow.session.execute(
        select(Callback.due_at).where(
            sa.or_(col(Callback.party_id) == party_id, col(Callback.phone_index) == phone_index),
            col(Callback.state).in_(OPEN_STATES),
            col(Callback.contact_consent),
            col(Callback.callback_id) != (exclude or ""),
            col(Callback.due_at).between(start - timedelta(days=1), end + timedelta(days=1)),
        )
    )
    return _busy(policy=policy, timezone=timezone, made=made.scalars(), booked=booked.scalars())


@dataclass(frozen=True, slots=True)
class Booking:
    """What busy days read of another person's open callback, which the batch does not change."""

    callback_id: str
    party_id: str
    phone_index: str
    state: str
    contact_consent: bool
    due_at: datetime


class People:
    """The calls made and the open callbacks of a batch's persons, loaded with one query per table.

    The batch's own callbacks are its live objects, so what it changes (a new callback, a moved or
    closed one) counts at once, as it would after a flush. Kept in the session's `info` for its transaction.
    """

    KEY = "scheduler.people"

    def __init__(self, *, start: datetime, end: datetime) -> None:
        self.start, self.end = start, end  # callbacks due in [start, end], calls made on the local days between
        self.calls: dict[str, list[tuple[int | None, date]]] = {}  # party id or phone index -> (call id, local day)
        self.callbacks: dict[str, dict[str, AnyCallback | Booking]] = {}  # party id or phone index -> by id

    @classmethod
    def of(cls, uow: UnitOfWork) -> People | None:
        found = uow.session.info.get(cls.KEY)
        return found if isinstance(found, People) else None

    @classmethod
    async def load(
        cls, *, uow: UnitOfWork, persons: Iterable[tuple[str, str]], start: datetime, end: datetime,
        known: Iterable[AnyCallback] = (),
    ) -> People:  # fmt: skip
        """Load for the (party id, phone index) pairs, callbacks due in [start, end]; remembered in the uow."""
        people = cls(start=start, end=end)
        pairs = set(persons)
        party_ids, phones = {p for p, _ in pairs}, {i for _, i in pairs}
        # Calls by local day: any zone's day of an instant in range lies within a day of its UTC date.
        first, last = start.date() - timedelta(days=1), end.date() + timedelta(days=1)
        pc = PersonCall.__table__.c  # type: ignore[attr-defined]
        calls = await uow.session.execute(
            sa.select(pc.id, pc.party_id, pc.phone_index, pc.local_day).where(
                sa.or_(among(pc.party_id, party_ids, uow.dialect), among(pc.phone_index, phones, uow.dialect)),
                pc.local_day.between(first, last),
            )
        )
        for call_id, party_id, phone_index, day in calls:
            for key in {party_id, phone_index}:
                people.calls.setdefault(key, []).append((call_id, day))
        # Rows, not entities: nothing here changes another person's callbacks, and the ones in hand
        # (which the batch may change) are added live below. Open ones are picked here, not in SQL: a
        # state condition could lead the planner to scan every open callback instead of the persons' index.
        c = CALLBACKS.c
        found = await uow.session.execute(
            sa.select(c.callback_id, c.party_id, c.phone_index, c.state, c.contact_consent, c.due_at).where(
                sa.or_(among(c.party_id, party_ids, uow.dialect), among(c.phone_index, phones, uow.dialect)),
                c.due_at.between(start, end),
            )
        )
        live = {cb.callback_id: cb for cb in known}
        for row in found:
            if row.state in OPEN_STATES and row.callback_id not in live:
                people.add(Booking(*row))
        for cb in live.values():
            people.add(cb)
        uow.session.info[cls.KEY] = people
        return people

    def add(self, cb: AnyCallback | Booking) -> None:
        """A callback of one of these persons (new, or loaded): it counts from now on."""
        for key in (cb.party_id, cb.phone_index):
            self.callbacks.setdefault(key, {})[cb.callback_id] = cb

    def covers(self, *, start: datetime, end: datetime) -> bool:
        """Whether busy_days over [start, end] can be answered from what was loaded."""
        return self.start <= start - timedelta(days=1) and end + timedelta(days=1) <= self.end

    def busy_days(
        self, *, policy: Policy, party_id: str, phone_index: str, timezone: str, exclude: str | None,
        start: datetime, end: datetime,
    ) -> frozenset[date]:  # fmt: skip
        """As the module's busy_days, from memory."""
        calls = {**dict(self.calls.get(party_id, ())), **dict(self.calls.get(phone_index, ()))}
        cbs = {**self.callbacks.get(party_id, {}), **self.callbacks.get(phone_index, {})}
        if len(calls) + len(cbs) < policy.attempts.max_calls_per_person_per_day:
            return frozenset()  # too few calls and bookings in all to fill any day: most people
        first, last = (planner.local_day(at=t, timezone=timezone) for t in (start, end))
        made = [day for day in calls.values() if first <= day <= last]
        low, high = start - timedelta(days=1), end + timedelta(days=1)
        booked = [
            cb.due_at
            for cb in cbs.values()
            if cb.state in OPEN_STATES and cb.contact_consent and cb.callback_id != exclude and low <= cb.due_at <= high
        ]
        return _busy(policy=policy, timezone=timezone, made=made, booked=booked)


async def kept_arms(*, uow: UnitOfWork, loan_id: str) -> dict[str, str]:
    """The arms the loan's callbacks already hold (the earliest callback's assignment wins)."""
    loans = Loans.of(uow)
    if loans is not None and loan_id in loans.stages:
        raws: Iterable[str] = [cb.arms for cb in reversed(loans.callbacks.get(loan_id, []))]
    else:
        await flush(uow)
        found = await uow.session.execute(
            select(Callback.arms).where(Callback.loan_id == loan_id).order_by(col(Callback.seq).desc())
        )
        raws = found.scalars()
    kept: dict[str, str] = {}
    for raw in raws:
        kept |= experiments.parse(raw)  # newest first, so the earliest overwrites
    return kept


class Loans:
    """A batch's loans as loaded at its start: their stage rows and all their callbacks, rows locked.

    Loaded with one query per table (not three per loan) and kept in the session's `info`; what the
    batch adds is added here, so a later event of the same loan in the batch sees it.
    """

    KEY = "scheduler.loans"

    def __init__(self) -> None:
        self.stages: dict[str, StageRow | None] = {}
        self.callbacks: dict[str, list[AnyCallback]] = {}  # oldest first

    @classmethod
    def of(cls, uow: UnitOfWork) -> Loans | None:
        found = uow.session.info.get(cls.KEY)
        return found if isinstance(found, Loans) else None

    def open(self, loan_id: str) -> list[AnyCallback]:
        return [cb for cb in self.callbacks.get(loan_id, []) if cb.state not in CLOSED_STATES]


async def load_loans(
    *, uow: UnitOfWork, events: list[LoanStageChanged], policy: Policy, cipher: Cipher
) -> Callable[[], Awaitable[None]]:
    """Load what a batch of loan events needs, one query per table: stages, callbacks, and the people's days.

    Returns what writes the batch's timer and timeline rows, for the runner to await before it commits.
    """
    await flush(uow)  # what earlier events of the transaction wrote, before reading
    start_batch(uow)
    ids = sorted({e.loan_id for e in events})
    lock = uow.dialect == "postgresql"
    loans = Loans()
    loans.stages = dict.fromkeys(ids)
    chosen = among(LOAN_STAGES.c.loan_id, ids, uow.dialect)
    stages = sa.select(LOAN_STAGES).where(chosen).order_by(LOAN_STAGES.c.loan_id)
    for row in await uow.session.execute(stages.with_for_update() if lock else stages):
        loans.stages[row.loan_id] = StageRow(row.loan_id, row.stage, row.changed_at)
    # Rows, not entities: the batch only reads these (a loan it cancels is read again, after `forget`).
    found = sa.select(CALLBACKS).where(among(CALLBACKS.c.loan_id, ids, uow.dialect)).order_by(CALLBACKS.c.seq)
    for cb in CallbackRow.loaded(await uow.session.execute(found.with_for_update() if lock else found)):
        loans.callbacks.setdefault(cb.loan_id, []).append(cb)
    uow.session.info[Loans.KEY] = loans
    persons = [
        (party.party_id, cipher.phone_index(party.phone))
        for e in events
        for party in e.parties
        if party.contact_consent and party.role in policy.stages.get(e.stage, [])
    ]
    if persons:
        now = utcnow()
        # Wide enough for any first call's horizon; busy_days queries itself when a range is not covered.
        reach = timedelta(days=2 * policy.attempts.deadline_business_days + 21)
        known = [cb for cbs in loans.callbacks.values() for cb in cbs]
        await People.load(uow=uow, persons=persons, start=now - timedelta(days=1), end=now + reach, known=known)
    return partial(flush, uow)


async def schedule_callbacks(
    *,
    uow: UnitOfWork,
    event: LoanStageChanged,
    policy: Policy,
    cipher: Cipher,
    now: datetime,
    notices: Notices | None = None,
) -> list[AnyCallback]:
    """Open one callback per party whose role the policy calls at this stage.

    With `notices`, a notice planned for now goes out in this transaction rather than by a timer.
    """
    roles = policy.stages.get(event.stage, [])
    loans = Loans.of(uow)
    cached = loans is not None and event.loan_id in loans.stages
    opened = loans.open(event.loan_id) if loans and cached else await open_callbacks(uow=uow, loan_id=event.loan_id)
    existing = {cb.party_id for cb in opened if cb.stage == event.stage}
    people, rows = People.of(uow), batch_rows(uow)
    kept = await kept_arms(uow=uow, loan_id=event.loan_id)
    arms = experiments.assign(policy=policy, loan_id=event.loan_id, kept=kept)
    treated = experiments.treatment(policy=policy, arms=arms).policy
    created: list[AnyCallback] = []
    at_once: list[AnyCallback] = []
    for party in event.parties:
        if party.role not in roles or party.party_id in existing:
            continue
        phone_index = cipher.phone_index(party.phone)
        busy = frozenset[date]()
        if party.contact_consent:
            horizon = planner.business_day_end(
                policy=policy, reach=planner.Reach.of(party), now=now, days=policy.attempts.deadline_business_days
            )
            busy = await busy_days(
                uow=uow, policy=policy, party_id=party.party_id, phone_index=phone_index,
                timezone=party.timezone, exclude=None, start=now, end=horizon,
            )  # fmt: skip
        plan = planner.plan_first_call(policy=treated, party=party, now=now, busy_days=busy)
        window = party.preferred_window
        cb = (Callback if rows is None else CallbackRow)(
            callback_id=str(uuid.uuid4()),
            loan_id=event.loan_id,
            stage=event.stage,
            branch_id=event.branch_id,
            party_id=party.party_id,
            role=party.role,
            state="scheduled",
            contact_enc=cipher.encrypt_json({"name": party.name, "phone": party.phone, "email": party.email}),
            caller_code_enc=cipher.encrypt(links.caller_code()),
            phone_index=phone_index,
            timezone=party.timezone,
            language=party.language,
            contact_consent=party.contact_consent,
            due_at=plan.due_at,
            deadline=plan.deadline,
            notice_at=plan.notice_at,
            flags="",
            window_start=window.start if window else None,
            window_end=window.end if window else None,
            arms=json.dumps(arms, sort_keys=True),
            created_at=now,  # given, not defaulted: a default factory costs a signature inspection per row
            updated_at=now,
        )
        if party.contact_consent:
            if notices is not None and notices.at_once(cb, now=now):
                at_once.append(cb)
            else:
                add_timer(uow, cb.callback_id, "notice", plan.notice_at)
            add_timer(uow, cb.callback_id, "due", plan.due_at)
        else:
            # Never phoned: the notifier sends the questionnaire on callback.scheduled at once.
            cb.due_at = cb.notice_at = now
            add_flag(cb, "no_consent")
        add_timer(uow, cb.callback_id, "deadline", plan.deadline)
        if isinstance(cb, CallbackRow) and rows is not None:
            rows.insert(CALLBACKS, cb)
        else:
            uow.session.add(cb)
        if loans is not None and cached:
            loans.callbacks.setdefault(cb.loan_id, []).append(cb)
        if people is not None:
            people.add(cb)  # the next party of this loan may be the same person (shared phone)
        else:
            await flush(uow)  # for the same reason: busy_days reads the table
        publish(
            uow,
            cb,
            CallbackScheduled(
                **ref(cb),
                due_at=cb.due_at,
                deadline=cb.deadline,
                notice_at=cb.notice_at,
                verification_items=list(labels.VERIFICATION_ITEMS),
                channel="phone" if party.contact_consent else "questionnaire",
                flags=flags_of(cb),
                arms=arms,
            ),
        )
        created.append(cb)
    for cb in at_once:  # after the loan's every party: a shared phone's other callbacks are busy days
        assert notices is not None
        await notices.send_notice(uow, cb=cb, now=now)
    return created


async def cancel_loan(*, uow: UnitOfWork, loan_id: str, reason: CancelReason, now: datetime) -> list[Callback]:
    """Cancel every open callback of a loan."""
    cancelled = await open_callbacks(uow=uow, loan_id=loan_id)
    for cb in cancelled:
        await close(uow=uow, cb=cb, state="cancelled", now=now)
        publish(uow, cb, CallbackCancelled(**ref(cb), reason=reason))
    return cancelled


async def cancel_by_operator(*, uow: UnitOfWork, callback_id: str, reason: str, cipher: Cipher) -> Callback:
    """A supervisor stops a callback; dialers and agents learn it from `callback.cancelled`."""
    cb = await find(uow=uow, callback_id=callback_id, lock=True)
    if cb is None:
        raise Rejected(404, f"callback {callback_id} not found")
    if cb.state in CLOSED_STATES:
        raise Rejected(409, f"callback {callback_id} is already {cb.state}")
    await close(uow=uow, cb=cb, state="cancelled", now=utcnow())
    # The reason is free text a supervisor typed: kept encrypted here, never put on a topic.
    cb.cancel_note_enc = cipher.encrypt(reason)
    publish(uow, cb, CallbackCancelled(**ref(cb), reason="operator"))
    return cb


async def close(
    *, uow: UnitOfWork, cb: AnyCallback, state: CallbackState, now: datetime, cancel: bool = True
) -> None:
    """Close the callback; `cancel=False` leaves cancelling its timers to the caller (a batch does it once)."""
    cb.state = state
    cb.closed_at = now
    cb.updated_at = now
    save(uow, cb)
    if cancel:
        await cancel_timers(uow=uow, callback_id=cb.callback_id)


async def expire(
    *, uow: UnitOfWork, cb: AnyCallback, reason: ExpiryReason, now: datetime, cancel: bool = True
) -> None:
    """Close a callback as expired: its deadline passed or its attempts ran out."""
    await close(uow=uow, cb=cb, state="expired", now=now, cancel=cancel)
    publish(uow, cb, CallbackExpired(**ref(cb), reason=reason))


async def loan_moved(
    *, uow: UnitOfWork, event: LoanStageChanged, policy: Policy, cipher: Cipher, notices: Notices | None = None
) -> None:
    """A loan moved: open callbacks for a calling stage, cancel them for rejected/withdrawn."""
    now = utcnow()
    repeat = await note_stage(uow=uow, loan_id=event.loan_id, stage=event.stage, now=now)
    if event.stage in CANCEL_REASON:
        # Callbacks opened earlier in the batch are read back from the table as rows to close: from here
        # on the batch reads the tables, not what it loaded.
        await flush(uow)
        forget(uow)
        await cancel_loan(uow=uow, loan_id=event.loan_id, reason=CANCEL_REASON[event.stage], now=now)
    elif event.stage in policy.stages and not repeat:
        # Upstream re-sending the stage the loan is already in must not call people again;
        # a loan that left the stage and came back is verified again.
        await schedule_callbacks(uow=uow, event=event, policy=policy, cipher=cipher, now=now, notices=notices)


async def note_stage(*, uow: UnitOfWork, loan_id: str, stage: Stage, now: datetime) -> bool:
    """Record the loan's stage; True when it was already in that stage."""
    loans, rows = Loans.of(uow), batch_rows(uow)
    if loans is not None and rows is not None and loan_id in loans.stages:
        held = loans.stages[loan_id]
        if held is None:  # a new loan: its row is inserted with the batch's, as it is then
            added = loans.stages[loan_id] = StageRow(loan_id, stage, now)
            rows.insert(LOAN_STAGES, added)
            return False
        repeat = held.stage == stage
        held.stage, held.changed_at = stage, now
        rows.update(LOAN_STAGES, held, key="loan_id", columns=("loan_id", "stage", "changed_at"))
        return repeat
    current = await uow.session.get(LoanStage, loan_id, with_for_update=uow.dialect == "postgresql")
    if current is None:
        uow.session.add(LoanStage(loan_id=loan_id, stage=stage, changed_at=now))
        await uow.session.flush()
        return False
    repeat = current.stage == stage
    current.stage, current.changed_at = stage, now
    uow.session.add(current)
    return repeat


async def record_call(*, uow: UnitOfWork, cb: Callback, event: CallbackOutcomeRecorded) -> None:
    """Count a phone call towards the person's daily cap (once per attempt)."""
    known = await uow.session.scalar(select(PersonCall.id).where(PersonCall.attempt_id == event.attempt_id))
    if known is None:
        uow.session.add(
            PersonCall(
                attempt_id=event.attempt_id,
                callback_id=cb.callback_id,
                party_id=cb.party_id,
                phone_index=cb.phone_index,
                local_day=planner.local_day(at=event.recorded_at, timezone=cb.timezone),
                called_at=event.recorded_at,
            )
        )
        await uow.session.flush()


async def apply_outcome(*, uow: UnitOfWork, event: CallbackOutcomeRecorded, policy: Policy) -> None:
    """An attempt was recorded: close, retry later, move to the party's time, or expire."""
    cb = await find(uow=uow, callback_id=event.callback_id, lock=True)
    if cb is None:
        return
    note(uow, callback_id=cb.callback_id, data=event, at=event.recorded_at)
    if cb.contact_consent and event.channel == "phone":  # a party's own page is not a call
        await record_call(uow=uow, cb=cb, event=event)
    if cb.state in CLOSED_STATES:
        return
    now = utcnow()
    if event.disposition in ("completed", "refused", "wrong_number"):
        if event.disposition == "wrong_number":
            add_flag(cb, "wrong_number")
        await close(uow=uow, cb=cb, state=event.disposition, now=now)
    elif not cb.contact_consent:
        return  # the questionnaire route has no phone calls to retry or move
    elif event.disposition == "reschedule_requested":
        requested = event.reschedule_to or event.recorded_at + policy.attempts.min_gap
        moved = planner.plan_reschedule(
            policy=policy, reach=reach(cb), requested=requested, now=now, deadline=cb.deadline
        )
        if moved is not None:
            await reschedule(uow=uow, cb=cb, due_at=moved, reason="party_requested", now=now)
    else:
        await retry(uow=uow, cb=cb, event=event, policy=policy, now=now)


async def retry(
    *, uow: UnitOfWork, cb: Callback, event: CallbackOutcomeRecorded, policy: Policy, now: datetime
) -> None:
    """After no_answer/busy: try again later, or expire when the attempts (or the days) ran out."""
    cb.calls_made += 1
    if cb.calls_made >= policy.attempts.max_calls:
        await expire(uow=uow, cb=cb, reason="attempts_exhausted", now=now)
        return
    busy = await busy_days(
        uow=uow, policy=policy, party_id=cb.party_id, phone_index=cb.phone_index, timezone=cb.timezone,
        exclude=cb.callback_id, start=now, end=cb.deadline,
    )  # fmt: skip
    retry_at = planner.plan_retry(
        policy=policy, reach=reach(cb), last_call_at=event.recorded_at, now=now, deadline=cb.deadline, busy_days=busy
    )
    if retry_at is None:
        # No decent slot is left before the deadline: no attempt remains.
        await expire(uow=uow, cb=cb, reason="attempts_exhausted", now=now)
        return
    cb.attempt += 1
    reason: RescheduleReason = "busy" if event.disposition == "busy" else "no_answer"
    await reschedule(uow=uow, cb=cb, due_at=retry_at, reason=reason, now=now)


async def reschedule(
    *, uow: UnitOfWork, cb: Callback, due_at: datetime, reason: RescheduleReason, now: datetime
) -> None:
    cb.state = "scheduled"
    cb.due_at = due_at
    cb.updated_at = now
    uow.session.add(cb)
    await cancel_timers(uow=uow, callback_id=cb.callback_id, kinds=("due", "notice"))
    add_timer(uow, cb.callback_id, "due", due_at)
    publish(uow, cb, CallbackRescheduled(**ref(cb), due_at=due_at, reason=reason))


async def find(*, uow: UnitOfWork, callback_id: str, lock: bool = False) -> Callback | None:
    """A callback by id; `lock` holds its row so that a replica's timer and an outcome do not interleave."""
    query = select(Callback).where(Callback.callback_id == callback_id)
    if lock and uow.dialect == "postgresql":
        query = query.with_for_update()
    result = await uow.session.execute(query)
    return result.scalar_one_or_none()
