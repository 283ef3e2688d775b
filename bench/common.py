"""What every part of `make bench` shares: the broker and PostgreSQL, services as subprocesses, figures.

Every service under test runs as `huifang run SERVICE` in a process of its own (as in production),
on the bench's own broker and PostgreSQL, talking only to 127.0.0.1. Baselines run in the bench
process on the same broker and database, through the services' own engine settings (same
durability: PostgreSQL defaults; SQLite WAL with synchronous=NORMAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli.devstack import KafkaBroker, Postgres, free_port  # noqa: E402
from services.scheduler.planner import Reach, is_allowed  # noqa: E402
from shared.crypto import Cipher, generate_key  # noqa: E402
from shared.db import Database  # noqa: E402
from shared.kafka import create_topics  # noqa: E402
from shared.policy import Policy, load_policy  # noqa: E402
from shared.settings import Settings  # noqa: E402

R = TypeVar("R")
RESULTS = ROOT / "bench" / "results"
LOGS = RESULTS / "logs"  # each service's log of the last runs, to look into a surprising figure
POLICY = ROOT / "policy.toml"
HUIFANG = ROOT / ".venv" / "bin" / "huifang"
API_KEY = "bench-agent-key-0123456789abcdef"
API_KEYS = f"agent:agent-1:{API_KEY},supervisor:sup-1:bench-supervisor-key-0123456789"
WEBHOOK_SECRET = "bench-webhook-secret-0123456789abcdef"
LINK_SECRET = b"bench-link-secret-0123456789abcdef0123"  # the services' page-link secret, for baselines that sign links
NOTES: list[str] = []  # what the summary should say about how this run deviated
# Each rate is measured TRIALS times on each side, alternating, and the table gives the medians: one run
# of either side moves 10-30% on this virtual machine with nothing else running. Every trial is kept.
TRIALS = int(os.environ.get("BENCH_TRIALS", "3"))
RUNS: dict[str, dict[str, list[Any]]] = {}  # figure group -> side -> each trial's result, for the summary
WAIT = 300.0  # seconds any one measured run may take before the bench gives up


@dataclass
class Figure:
    """One row of the table: `ratio` is value / baseline when both are rates (unit …/s), else None."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    goal: str = ""
    ratio: float | None = None

    def __post_init__(self) -> None:
        if self.baseline and self.ratio is None and self.unit.endswith("/s"):
            self.ratio = round(self.value / self.baseline, 3)
        self.value = round(self.value, 3)
        self.baseline = None if self.baseline is None else round(self.baseline, 3)


async def alternate(group: str, **sides: Callable[[], Awaitable[R]]) -> dict[str, list[R]]:
    """Each side TRIALS times, their order reversed every trial (A B, B A, A B …) so that a machine
    getting slower or faster through the run weighs on both sides alike."""
    runs: dict[str, list[R]] = {name: [] for name in sides}
    names = list(sides)
    for trial in range(TRIALS):
        for name in names if trial % 2 == 0 else reversed(names):
            runs[name].append(await sides[name]())
    RUNS[group] = dict(runs)
    return runs


def median(results: Sequence[float]) -> float:
    return statistics.median(results)


def medians(results: Sequence[dict[str, float]]) -> dict[str, float]:
    """Key by key, the median of the trials' results."""
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def quantile(values: Sequence[float], q: int) -> float:
    """The q-th percentile (inclusive method); the single value of a one-element list."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@dataclass
class Stack:
    """The broker and PostgreSQL every part shares, and the keys the services are started with."""

    bootstrap: str
    pg_url: str
    workdir: Path
    encryption_key: str = field(default_factory=generate_key)
    index_key: str = "bench-index-key-0123456789abcdef0123"
    policy: Path = POLICY

    @property
    def cipher(self) -> Cipher:
        return Cipher([self.encryption_key], index_key=self.index_key)

    def prefix(self) -> str:
        """A fresh topic and schema prefix: every run starts on empty topics and tables."""
        return f"b{uuid.uuid4().hex[:8]}_"

    def settings(self, prefix: str, **extra: Any) -> Settings:
        return Settings(kafka_bootstrap_servers=self.bootstrap, huifang_topic_prefix=prefix, **extra)

    def database(self, kind: str, prefix: str, service: str) -> Database:
        """The database a service started with `prefix` uses (its schema, or its SQLite file)."""
        url = self.pg_url if kind == "postgresql" else f"sqlite+aiosqlite:///{self.workdir / prefix}-{service}.db"
        return Database(url, schema=f"{prefix}{service}", source=f"/huifang/{service}", cipher=self.cipher,
                        topic_prefix=prefix)  # fmt: skip

    def env(self, kind: str, prefix: str, **extra: str) -> dict[str, str]:
        """The environment of `huifang run` for one system on this stack."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HUIFANG_", "KAFKA_", "DATABASE_"))}
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            DATABASE_URL=self.pg_url if kind == "postgresql" else f"sqlite+aiosqlite:///{self.workdir / prefix}.db",
            HUIFANG_TOPIC_PREFIX=prefix,
            HUIFANG_DB_SCHEMA_PREFIX=prefix,
            HUIFANG_DATA_DIR=str(self.workdir),
            HUIFANG_ENV="test",
            HUIFANG_API_KEYS=API_KEYS,
            HUIFANG_ENCRYPTION_KEY=self.encryption_key,
            HUIFANG_INDEX_KEY=self.index_key,
            HUIFANG_LINK_SECRET=LINK_SECRET.decode(),
            HUIFANG_POLICY_FILE=str(self.policy),
            HUIFANG_LOG_FORMAT="json",
            HUIFANG_WEBHOOK_SECRET=WEBHOOK_SECRET,
        )
        env.update(extra)
        return env


@contextmanager
def stack() -> Iterator[Stack]:
    """A broker and PostgreSQL of the bench's own, unless KAFKA_BOOTSTRAP_SERVERS_TEST / TEST_DATABASE_URL."""
    workdir = ROOT / ".local" / f"bench-{uuid.uuid4().hex[:8]}"  # the embedded server's user must reach it
    workdir.mkdir(parents=True)
    broker: KafkaBroker | None = None
    server: Postgres | None = None
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS_TEST")
        if not bootstrap:
            broker = KafkaBroker(workdir / "kafka", port=free_port(), controller_port=free_port(), heap="768m")
            broker.start()
            bootstrap = broker.bootstrap
        pg_url = os.environ.get("TEST_DATABASE_URL")
        if not pg_url:
            server = Postgres(workdir / "pg")
            pg_url = server.start()
        yield Stack(bootstrap=bootstrap, pg_url=pg_url, workdir=workdir)
    finally:
        if server is not None:
            server.stop()
        if broker is not None:
            broker.stop()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


@dataclass
class Service:
    """One `huifang run SERVICE` process."""

    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def service(st: Stack, kind: str, prefix: str, name: str, **env: str) -> AsyncIterator[Service]:
    """Start one service on the stack and wait for /readyz; stop it (SIGTERM) afterwards."""
    await create_topics(st.settings(prefix))
    svc = _spawn(st, kind, prefix, name, env)
    try:
        await wait_ready(svc)
        yield svc
    finally:
        svc.process.terminate()
        await asyncio.to_thread(_reap, svc.process)


def _spawn(st: Stack, kind: str, prefix: str, name: str, env: dict[str, str]) -> Service:
    port = free_port()
    LOGS.mkdir(parents=True, exist_ok=True)
    with open(LOGS / f"{prefix}{name}.log", "ab") as log:  # the child keeps its own handle
        process = subprocess.Popen(
            [str(HUIFANG), "run", name],
            env=st.env(kind, prefix, **{f"HUIFANG_{name.upper()}_PORT": str(port)}, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    return Service(name, port, process)


def _reap(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def wait_ready(svc: Service, within: float = 90.0) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=svc.url, timeout=2) as client:
        while time.monotonic() < deadline:
            if svc.process.poll() is not None:
                raise RuntimeError(f"{svc.name} exited with {svc.process.returncode}")
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{svc.name} not ready within {within:.0f}s")


async def wait_until(predicate: Any, *, every: float = 0.02, within: float = WAIT, what: str = "") -> float:
    """Poll an async predicate until true; returns the perf_counter time it was first seen true."""
    deadline = time.monotonic() + within
    while True:
        if await predicate():
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(every)


@contextmanager
def collector_paused() -> Iterator[None]:
    """The bench's own cyclic collector off while it times latencies, as `timeit` does: after the
    earlier parts a full collection of this process paused it 100 ms, which an open-loop client
    would have counted as the service's latency."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def worst(timed: Sequence[tuple[float, float]], count: int = 5) -> str:
    """The slowest of (sent, seconds after the first send; latency, seconds), each with when it was
    sent: a stall shows as neighbours, a slow start as the first seconds."""
    slowest = sorted(timed, key=lambda t: t[1])[-count:]
    return "worst: " + ", ".join(f"{lat * 1000:.0f} ms sent at {at:.1f} s" for at, lat in reversed(slowest))


class LoopStalls:
    """The bench's own event loop, watched while it times latencies: a stall here delays the client's
    sends or the receiver's timestamps, and would be counted as the service's latency. On two shared
    cores it stalled 50-230 ms a few times a minute (a probe of the loop beside PostgreSQL commits)."""

    TICK = 0.005

    def __init__(self, over: float = 0.02) -> None:
        self.over = over
        self.stalls: list[tuple[float, float]] = []  # (perf_counter when seen, seconds late)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopStalls:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.TICK)
            late = time.perf_counter() - before - self.TICK
            if late > self.over:
                self.stalls.append((time.perf_counter(), late))

    def summary(self, origin: float) -> str:
        """One line for the log, times in seconds after `origin` (a perf_counter)."""
        if not self.stalls:
            return f"bench loop: no stall over {self.over * 1000:.0f} ms"
        at, late = max(self.stalls, key=lambda s: s[1])
        return (f"bench loop: {len(self.stalls)} stalls over {self.over * 1000:.0f} ms, the worst {late * 1000:.0f} ms"
                f" at {at - origin:.1f} s")  # fmt: skip


async def scalar(db: Database, sql: str, **params: Any) -> Any:
    """One value, read the way an onlooker reads: on SQLite not through the service's engine."""
    if db.dialect == "sqlite":
        # The engine begins every transaction IMMEDIATE (the write lock); a bench polling every 20 ms
        # through it would hold up the very writes it times. A plain WAL reader blocks no writer.
        return await asyncio.to_thread(_sqlite_scalar, db.url.split("///", 1)[1], sql, params)
    async with db.engine.connect() as conn:
        return (await conn.execute(sa.text(sql), params)).scalar()


def _sqlite_scalar(path: str, sql: str, params: dict[str, Any]) -> Any:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
        return conn.execute(sql, params).fetchone()[0]


async def drop(db: Database) -> None:
    """Drop what a run left (its PostgreSQL schema) and close the engine."""
    if db.dialect == "postgresql":
        async with db.engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{db.schema}" CASCADE'))
    await db.dispose()


def zone_at(offset: int) -> str:
    """The IANA zone of a whole-hour UTC offset (Etc/GMT signs are inverted)."""
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


def calling_zone(policy: Policy, now: datetime | None = None) -> str | None:
    """A zone where the policy lets a call go now and for the next two hours (calling hours on a calling
    day), the nearest to 13:00 local; None when it is no calling day anywhere (a weekend, a holiday)."""
    now = now or datetime.now(UTC)
    offsets = sorted(range(-12, 15), key=lambda off: abs((now.hour + off) % 24 + now.minute / 60 - 13))
    for offset in offsets:
        reach = Reach(timezone=zone_at(offset))
        if all(is_allowed(policy=policy, reach=reach, at=now + timedelta(hours=h), use_window=False) for h in (0, 2)):
            return zone_at(offset)
    return None


def timer_policy(st: Stack) -> str:
    """The zone the timer and ingest parts give their callbacks; on a day that is no calling day anywhere
    the services get the repo's policy without its holiday calendar (said in the summary), so timers fire,
    not wait."""
    zone = calling_zone(load_policy(st.policy))
    if zone is not None:
        return zone
    text = re.sub(r"(?m)^holidays\s*=.*$", 'holidays = ""', POLICY.read_text())
    st.policy = RESULTS / "policy-no-holidays.toml"
    RESULTS.mkdir(parents=True, exist_ok=True)
    st.policy.write_text(text)
    NOTES.append("no calling day anywhere today: the timer parts ran the policy without its holiday calendar")
    zone = calling_zone(load_policy(st.policy))
    assert zone is not None
    return zone


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}


def number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def print_table(figures: Sequence[Figure]) -> None:
    """The figures as a Markdown table (the README quotes it)."""
    print("\n| figure | value | baseline | ratio | unit | goal |\n|---|---:|---:|---:|---|---|")
    for f in figures:
        ratio = "" if f.ratio is None else f"{f.ratio:.3f}"
        print(f"| {f.name} | {number(f.value)} | {number(f.baseline)} | {ratio} | {f.unit} | {f.goal} |")


def write_summary(figures: Sequence[Figure], extra: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "summary.json"
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **extra,
        "notes": NOTES,
        "trials": RUNS,
        "figures": [asdict(f) for f in figures],
    }
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path
