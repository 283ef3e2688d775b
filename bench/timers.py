"""Timers: the scheduler's timer loop (policy on) against a set-based raw-SQL loop doing the same writes.

PostgreSQL only: claiming with SKIP LOCKED is what a timer loop of several replicas needs.
Both sides fire `due` timers of open callbacks in a zone where the policy lets a call go now (calling
hours on a calling day, the nearest to 13:00 local), so neither side defers any:

- burst: 1,000 timers due at one instant; lateness is from `fire_at` until the bench sees the timer
  fired (committed), polled every 20 ms on both sides; `fired_at < fire_at` counts as early;
- throughput: a backlog of 2,000 due timers, timers/s from the first seen fired to the last (30 s at most).

The scheduler runs as `huifang run scheduler` with the repo's policy.toml. The baseline, per pass:
`UPDATE timer … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED LIMIT 200) RETURNING`, one SELECT of
the batch's callbacks, the `callback.due` events built in Python (contact and caller code decrypted,
envelope encrypted for the outbox as the relay expects), then one UPDATE of the callbacks, one
multi-row INSERT each of timeline lines and outbox rows, one commit (the page link is signed too;
the page's slots, pure planner CPU, are left to the loop). After a short pass it sleeps
as the loop does: until the next timer, at most the poll interval, at least 50 ms.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from bench.common import (
    LINK_SECRET,
    ROOT,
    Figure,
    Stack,
    alternate,
    drop,
    medians,
    quantile,
    scalar,
    service,
    timer_policy,
    wait_until,
)
from services.scheduler.models import Callback, CallbackEvent, Timer
from shared import labels, links
from shared.db import Database
from shared.events import CallbackDue, encode, new_envelope
from shared.outbox import OutboxMessage

MIGRATIONS = ROOT / "services" / "scheduler" / "migrations"
POLL = 0.5  # HUIFANG_TIMER_POLL_SECONDS, the default
BATCH = 200
MIN_PAUSE = 0.05
BURST = 1000
BACKLOG = 2000
BACKLOG_SECONDS = 30.0  # the rate is taken over at most this long, to bound the bench on a slow loop
TABLE = {m.__tablename__: m.__table__ for m in (Callback, Timer, CallbackEvent, OutboxMessage)}  # type: ignore[union-attr]


async def seed(st: Stack, db: Database, *, count: int, fire_at: datetime, tag: str) -> int:
    """`count` open callbacks, each with one `due` timer at `fire_at`; returns the highest timer id."""
    cipher, now, zone = st.cipher, datetime.now(UTC), timer_policy(st)
    contact = cipher.encrypt_json({"name": "张伟", "phone": "+8613800138000", "email": None})
    code = cipher.encrypt("123456")
    callbacks, timers = [], []
    for i in range(count):
        cid = str(uuid.uuid4())
        callbacks.append({
            "callback_id": cid, "loan_id": f"L-{tag}-{i}", "stage": "final_check", "branch_id": "BR-1",
            "party_id": f"P-{tag}-{i}", "role": "borrower", "state": "scheduled", "attempt": 1, "calls_made": 0,
            "contact_enc": contact, "caller_code_enc": code, "phone_index": cipher.phone_index(f"+86139{i:08d}"),
            "timezone": zone, "language": "zh-CN", "contact_consent": True, "due_at": fire_at,
            "deadline": fire_at + timedelta(days=5), "notice_at": fire_at - timedelta(days=1), "flags": "",
            "arms": "{}", "created_at": now, "updated_at": now,
        })  # fmt: skip
        timers.append({"callback_id": cid, "kind": "due", "fire_at": fire_at, "fired_at": None, "cancelled": False})
    async with db.engine.begin() as conn:
        for start in range(0, count, 5000):
            await conn.execute(sa.insert(TABLE["callback"]), callbacks[start : start + 5000])
            await conn.execute(sa.insert(TABLE["timer"]), timers[start : start + 5000])
        return int((await conn.execute(sa.text("SELECT max(id) FROM timer"))).scalar_one())


async def watch(
    db: Database, *, after: int, upto: int, limit: float | None = None
) -> list[tuple[datetime, datetime, datetime]]:
    """Poll every 20 ms until timers after..upto have all fired (or `limit` seconds after the first did):
    (seen at, fire_at, fired_at) of each seen fired."""
    seen: dict[int, tuple[datetime, datetime, datetime]] = {}
    query = sa.text("SELECT id, fire_at, fired_at FROM timer WHERE id > :a AND id <= :b AND fired_at IS NOT NULL")

    async def all_fired() -> bool:
        async with db.engine.connect() as conn:
            rows = (await conn.execute(query, {"a": after, "b": upto})).all()
        at = datetime.now(UTC)
        for id_, fire_at, fired_at in rows:
            seen.setdefault(id_, (at, fire_at, fired_at))
        first = min((t for t, _, _ in seen.values()), default=at)
        return len(seen) >= upto - after or (limit is not None and (at - first).total_seconds() > limit)

    await wait_until(all_fired, what=f"{upto - after} timers to fire")
    return list(seen.values())


async def episode(st: Stack, db: Database) -> dict[str, float]:
    """The burst, then the backlog, on whatever loop is running over `db`."""
    top = await scalar_max(db)
    upto = await seed(st, db, count=BURST, fire_at=datetime.now(UTC) + timedelta(seconds=3), tag=f"b{top}")
    fired = await watch(db, after=top, upto=upto)
    lateness = [(at - fire_at).total_seconds() for at, fire_at, _ in fired]
    early = sum(1 for _, fire_at, fired_at in fired if fired_at < fire_at)
    due = await scalar(db, "SELECT count(*) FROM callback WHERE state = 'due' AND loan_id LIKE :t", t=f"L-b{top}-%")
    if due != BURST:  # a deferred or failed timer would make the figures about something else
        raise RuntimeError(f"{due} of the burst's {BURST} callbacks became due")
    backlog = await seed(st, db, count=BACKLOG, fire_at=datetime.now(UTC) - timedelta(seconds=1), tag=f"t{upto}")
    fired = await watch(db, after=upto, upto=backlog, limit=BACKLOG_SECONDS)
    times = sorted(at for at, _, _ in fired)
    # From the first pass seen to the last: the seeding commit and the first claim are not the loop's rate.
    first = sum(1 for t in times if t == times[0])
    rate = (len(times) - first) / (times[-1] - times[0]).total_seconds()
    return {"p50": quantile(lateness, 50), "p99": quantile(lateness, 99), "max": max(lateness), "early": early,
            "rate": rate}  # fmt: skip


async def scalar_max(db: Database) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(sa.text("SELECT coalesce(max(id), 0) FROM timer"))).scalar_one())


async def huifang_side(st: Stack, prepare: Callable[[Database], Awaitable[None]] | None = None) -> dict[str, float]:
    prefix = st.prefix()
    db = st.database("postgresql", prefix, "scheduler")
    timer_policy(st)  # before the service starts: it may swap the policy file
    try:
        async with service(st, "postgresql", prefix, "scheduler", HUIFANG_TIMER_POLL_SECONDS=str(POLL)):
            if prepare:
                await prepare(db)
            result = await episode(st, db)
        print(f"  timers huifang: {fmt(result)}", flush=True)
        return result
    finally:
        await drop(db)


def page(callback_id: str, deadline: datetime) -> str:
    """The party's page link, signed as the scheduler signs it."""
    token = links.sign(secret=LINK_SECRET, callback_id=callback_id, expires_at=deadline)
    return links.page_url(public_url="http://127.0.0.1:8002", token=token)


CLAIM = sa.text(
    "UPDATE timer SET fired_at = :now WHERE id IN (SELECT id FROM timer WHERE fired_at IS NULL AND fire_at <= :now"
    " ORDER BY fire_at LIMIT :batch FOR UPDATE SKIP LOCKED) RETURNING callback_id, kind"
)
NEXT = sa.text("SELECT min(fire_at) FROM timer WHERE fired_at IS NULL")


async def raw_pass(st: Stack, db: Database, prefix: str) -> int:
    """One pass of the baseline: claim, load, build the events, write them set-based, commit."""
    cipher, now = st.cipher, datetime.now(UTC)
    callbacks = TABLE["callback"]
    async with db.engine.begin() as conn:
        claimed = (await conn.execute(CLAIM, {"now": now, "batch": BATCH})).all()
        if not claimed:
            return 0
        ids = [row.callback_id for row in claimed if row.kind == "due"]
        found = (await conn.execute(sa.select(callbacks).where(callbacks.c.callback_id.in_(ids)))).all()
        events, outbox = [], []
        for cb in found:
            contact = cipher.decrypt_json(cb.contact_enc)
            data = CallbackDue(
                loan_id=cb.loan_id, callback_id=cb.callback_id, party_id=cb.party_id, role=cb.role, stage=cb.stage,
                branch_id=cb.branch_id, attempt=cb.attempt, state="due", due_at=cb.due_at, deadline=cb.deadline,
                caller_code=cipher.decrypt(cb.caller_code_enc), self_service_url=page(cb.callback_id, cb.deadline),
                name=contact["name"], phone=contact["phone"],
                email=contact.get("email"), timezone=cb.timezone, language=cb.language,
                purpose=labels.purpose(stage=cb.stage, language=cb.language),
                verification_items=list(labels.VERIFICATION_ITEMS),
            )  # fmt: skip
            envelope = new_envelope(data, source="/huifang/scheduler", subject=cb.loan_id)
            events.append({"callback_id": cb.callback_id, "type": data.event_type, "at": now,
                           "detail": '{"state": "due", "attempt": 1}'})  # fmt: skip
            outbox.append({"event_id": envelope.id, "topic": prefix + data.topic, "key": cb.loan_id,
                           "payload": db.seal(encode(envelope).decode()), "created_at": now})  # fmt: skip
        await conn.execute(
            sa.update(callbacks).where(callbacks.c.callback_id.in_(ids)).values(state="due", updated_at=now)
        )
        await conn.execute(sa.insert(TABLE["callback_event"]), events)
        await conn.execute(sa.insert(TABLE["outbox"]), outbox)
    return len(claimed)


async def raw_loop(st: Stack, db: Database, prefix: str) -> None:
    while True:
        if await raw_pass(st, db, prefix) >= BATCH:
            continue
        async with db.engine.connect() as conn:
            nxt = (await conn.execute(NEXT)).scalar()
        pause = POLL if nxt is None else max(0.0, min(POLL, (nxt - datetime.now(UTC)).total_seconds()))
        await asyncio.sleep(max(MIN_PAUSE, pause))


async def baseline_side(st: Stack, prepare: Callable[[Database], Awaitable[None]] | None = None) -> dict[str, float]:
    prefix = st.prefix()
    db = st.database("postgresql", prefix, "scheduler")
    await db.migrate(MIGRATIONS)
    if prepare:
        await prepare(db)
    loop = asyncio.create_task(raw_loop(st, db, prefix))
    try:
        result = await episode(st, db)
        print(f"  timers baseline: {fmt(result)}", flush=True)
        return result
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await drop(db)


def fmt(result: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in result.items())


def figures(huifang: dict[str, float], baseline: dict[str, float], label: str = "") -> list[Figure]:
    return [
        Figure(f"timers{label}: backlog fired, policy on", huifang["rate"], "timers/s", baseline=baseline["rate"],
               goal="ratio ≥ 0.5"),
        Figure(f"timers{label}: burst of {BURST:,} at one instant, lateness p50", huifang["p50"], "s",
               baseline=baseline["p50"]),
        Figure(f"timers{label}: burst of {BURST:,} at one instant, lateness p99", huifang["p99"], "s",
               baseline=baseline["p99"], goal="≤ 1 s"),
        Figure(f"timers{label}: fired before their time", huifang["early"], "timers", baseline=baseline["early"],
               goal="0"),
    ]  # fmt: skip


LAST: dict[str, float] = {}  # the small-table figures of this run, for the 300k run to compare with


async def measure(st: Stack) -> list[Figure]:
    runs = await alternate("timers", huifang=lambda: huifang_side(st), baseline=lambda: baseline_side(st))
    huifang, baseline = medians(runs["huifang"]), medians(runs["baseline"])
    # One timer fired early in any trial is one too many: that figure is the worst trial's, not the median.
    for side, result in (("huifang", huifang), ("baseline", baseline)):
        result["early"] = max(r["early"] for r in runs[side])
    LAST.update(huifang)
    return figures(huifang, baseline)
