"""Big tables: the POST and timer figures again with 300k open callbacks and ~950k timers in the tables.

PostgreSQL writes the bulk itself (INSERT … SELECT generate_series) before the measurement: 300k
open callbacks in outcomes' view for the POST; for the timers, 300k open callbacks with a notice,
due and deadline timer each in the future (900k) and 50k timers already fired. Each figure is
compared with the same figure on small tables earlier in this run (measured here when that part
did not run): within 20% is the goal.
"""

from __future__ import annotations

import sqlalchemy as sa

from bench import attempts, timers
from bench.common import Figure, Stack, timer_policy
from shared.db import Database

OPEN = 300_000
FIRED = 50_000


async def bulk_timers(st: Stack, db: Database) -> None:
    contact = st.cipher.encrypt_json({"name": "张伟", "phone": "+8613800138000", "email": None})
    async with db.engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO callback (callback_id, loan_id, stage, branch_id, party_id, role, state, attempt,"
                " calls_made, contact_enc, phone_index, timezone, language, contact_consent, due_at, deadline,"
                " notice_at, flags, arms, created_at, updated_at)"
                " SELECT md5('cb' || i), 'L-bulk-' || i, 'final_check', 'BR-1', 'P-bulk-' || i, 'borrower',"
                " 'scheduled', 1, 0, :contact, md5('ph' || i), :zone, 'zh-CN', true,"
                " now() + interval '2 days', now() + interval '7 days', now() + interval '1 day', '', '{}',"
                " now(), now()"
                " FROM generate_series(1, :n) AS i"
            ),
            {"contact": contact, "zone": timer_policy(st), "n": OPEN},
        )
        await conn.execute(
            sa.text(
                "INSERT INTO timer (callback_id, kind, fire_at, fired_at, cancelled)"
                " SELECT md5('cb' || i), k.kind, now() + k.after, NULL, false"
                " FROM generate_series(1, :n) AS i, (VALUES ('notice', interval '1 day'), ('due', interval '2 days'),"
                " ('deadline', interval '7 days')) AS k(kind, after)"
            ),
            {"n": OPEN},
        )
        await conn.execute(
            sa.text(
                "INSERT INTO timer (callback_id, kind, fire_at, fired_at, cancelled)"
                " SELECT md5('old' || i), 'due', now() - interval '1 day', now() - interval '1 day', false"
                " FROM generate_series(1, :n) AS i"
            ),
            {"n": FIRED},
        )
        await conn.execute(sa.text("ANALYZE callback"))
        await conn.execute(sa.text("ANALYZE timer"))


def within(name: str, big: float, small: float, unit: str, *, higher_is_better: bool) -> Figure:
    """`ratio` is big / small; the goal is that big is no more than 20% worse than small."""
    goal = "ratio ≥ 0.8" if higher_is_better else "ratio ≤ 1.2"
    return Figure(name, big, unit, baseline=small, ratio=round(big / small, 3) if small else None, goal=goal)


async def measure(st: Stack) -> list[Figure]:
    small_post = attempts.LAST or await attempts.outcomes_run(st, "postgresql")
    big_post = await attempts.outcomes_run(st, "postgresql", open_callbacks=OPEN)
    small_timers = timers.LAST or await timers.huifang_side(st)

    async def prepare(db: Database) -> None:
        await bulk_timers(st, db)

    big_timers = await timers.huifang_side(st, prepare)
    label = f"{OPEN // 1000}k open callbacks"
    return [
        within(f"{label}: POST attempt, c={attempts.CONCURRENCY} (vs small tables)", big_post["post"],
               small_post["post"], "req/s", higher_is_better=True),
        within(f"{label}: POST attempt p99 at half peak (vs small tables)", big_post["p99"] * 1000,
               small_post["p99"] * 1000, "ms", higher_is_better=False),
        within(f"{label}: timers backlog fired (vs small tables)", big_timers["rate"], small_timers["rate"],
               "timers/s", higher_is_better=True),
        within(f"{label}: timer burst lateness p99 (vs small tables)", big_timers["p99"], small_timers["p99"], "s",
               higher_is_better=False),
    ]  # fmt: skip
