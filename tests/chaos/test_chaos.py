"""Black-box chaos: the three services as processes on a real broker, agents over HTTP, faults, then a count.

`make test-chaos` runs it (marker `chaos`) at the issue's scale (200 loans, 20 kills); HUIFANG_CHAOS_SCALE=short
(`make test-chaos-short`, in CI) gives every kind of fault a few turns in two systems of 20 loans.
Each scenario streams loans, plays agents that send the attempt they were given and retry "not yet" answers,
and injects its faults: kill -9 of service processes (some at the crash points between the relay's publish and
its delete, and between a consumer's database commit and its offset commit), broker kills, PostgreSQL stopped
-m immediate, a replica joining and leaving every 10 s, batches held past max_poll_interval_ms, the webhook, SMS
and SMTP receivers down. Then it counts effects from the topics, the APIs and the receivers: nothing lost,
nothing doubled, the dialled attempt, no call without its notice.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import create_async_engine

from cli.devstack import KafkaBroker, Postgres, free_port
from shared.crypto import generate_key
from shared.events import Envelope, encode
from shared.kafka import create_topics
from shared.settings import Settings
from tests.blackbox import AGENT_KEY, POLICY, ROLES, SERVICES, Mailbox, Receiver, env_of, mailbox, receiving
from tests.conftest import TEST_HOME
from tests.procs import ServiceProcess
from tests.support import Tap, loan_event, wait_for

pytestmark = pytest.mark.chaos


CRASH_POINTS = {"relay-crash": "outbox.published", "consumer-crash": "consumer.committed"}


@dataclass(frozen=True)
class Scenario:
    database: str  # sqlite or postgresql
    per_service: int  # replicas of each service
    loans: int
    kills: int = 0  # kill -9 of a random replica, restarted 1-3 s later
    broker_kills: int = 0
    crash_points: bool = False  # one kill at each crash point of shared/faults.py
    pg_stops: int = 0  # pg_ctl stop -m immediate, started again 3-6 s later
    churns: int = 0  # an extra replica joins, 10 s later leaves, 10 s later joins again...
    slow_batches: int = 0  # a service's batches held past max_poll_interval_ms (a table lock)
    receivers_down_s: float = 0.0  # webhook, SMS and SMTP receivers answering "try later"


FULL = {
    "sqlite-kills": Scenario("sqlite", 1, 200, kills=20, broker_kills=3, crash_points=True),
    "postgres-replicas": Scenario("postgresql", 2, 200, kills=20, broker_kills=1, crash_points=True),
    "postgres-immediate-stop": Scenario("postgresql", 1, 200, pg_stops=3),
    "replica-churn": Scenario("postgresql", 2, 200, churns=12),
    "slow-handler": Scenario("postgresql", 2, 200, slow_batches=3),
    "receivers-down": Scenario("sqlite", 1, 200, receivers_down_s=60.0),
}
# CI's budget has room for two system starts, not six: the short run gives each kind of fault a few turns in two.
SHORT = {
    "short-sqlite": Scenario("sqlite", 1, 20, kills=2, broker_kills=1, crash_points=True, receivers_down_s=15.0),
    "short-postgres": Scenario(
        "postgresql", 2, 20, kills=2, crash_points=True, pg_stops=1, churns=2, slow_batches=1
    ),
}
SCENARIOS = SHORT if os.environ.get("HUIFANG_CHAOS_SCALE") == "short" else FULL
MAX_POLL_INTERVAL_MS = 6_000  # the slow-handler scenario's, so that a held batch outlasts it soon


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as found:
        yield found


@pytest.fixture
def smtp() -> Iterator[Mailbox]:
    with mailbox() as found:
        yield found

@dataclass
class Ack:
    callback_id: str
    attempt: int  # what the agent dialled (from callback.due)
    disposition: str
    attempt_id: str
    recorded_attempt: int


@dataclass
class Run:
    """One scenario's system and what its agents and faults did."""

    name: str
    settings: Settings
    broker: KafkaBroker
    receiver: Receiver
    smtp: Mailbox
    replicas: list[ServiceProcess]
    tap: Tap
    rng: random.Random
    postgres: Postgres | None = None
    database_url: str = ""
    acks: list[Ack] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    restarts: list[float] = field(default_factory=list)  # seconds from each restart to its first partition
    unanswered: int = 0
    watchers: set[asyncio.Task[None]] = field(default_factory=set)

    def outcomes_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{r.env['HUIFANG_OUTCOMES_PORT']}" for r in self.replicas if r.service == "outcomes"]

    def wanted(self) -> list[ServiceProcess]:
        return [r for r in self.replicas if r.wanted]


async def play_agents(run: Run, stop: asyncio.Event) -> None:
    """Answer each callback.due once per attempt, as a desk does: same key on every retry, any replica."""
    seen: set[tuple[str, int]] = set()
    desks: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        for event in run.tap.events("callback.due"):
            data = event["data"]
            ticket = (data["callback_id"], int(data["attempt"]))
            if ticket not in seen:
                seen.add(ticket)
                desks.add(asyncio.create_task(call(run, *ticket)))
        await asyncio.sleep(0.2)
    await asyncio.gather(*desks)


async def call(run: Run, callback_id: str, attempt: int) -> None:
    rng = run.rng
    if attempt == 1 and rng.random() < 0.3:
        body: dict[str, Any] = {"disposition": "no_answer"}
    elif rng.random() < 0.3:
        body = {"disposition": "refused", "reason_code": rng.choice(["distrust", "privacy_concern", "time_conflict"])}
    else:
        body = {"disposition": "completed", "verification": {"identity": True}}
    body |= {"agent_id": "A-chaos", "attempt": attempt}
    key = f"{callback_id}:{attempt}"
    # Past the two minutes after which outcomes takes over a key whose request died with its process.
    give_up = time.monotonic() + 240
    while time.monotonic() < give_up:
        url = rng.choice(run.outcomes_urls())  # a replica that left (churn) refuses: the next try takes another
        try:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                response = await client.post(
                    f"/v1/callbacks/{callback_id}/attempts",
                    json=body,
                    headers={"Authorization": f"Bearer {AGENT_KEY}", "Idempotency-Key": key},
                )
        except httpx.TransportError:
            await asyncio.sleep(1)  # that replica is down: another one, same key
            continue
        if response.status_code == 201:
            out = response.json()
            run.acks.append(Ack(callback_id, attempt, body["disposition"], out["attempt_id"], out["attempt"]))
            return
        if response.status_code in (404, 409) and "Retry-After" in response.headers:
            await asyncio.sleep(float(response.headers["Retry-After"]))
            continue
        if response.status_code == 409 and "already closed" in response.text:
            return  # closed by an earlier answer (a duplicate due): nothing to record
        if response.status_code >= 500 or response.status_code == 409:
            await asyncio.sleep(1)
            continue
        raise AssertionError(f"agent got {response.status_code}: {response.text}")
    run.unanswered += 1


async def inject(run: Run, scenario: Scenario) -> None:
    """The scenario's faults in a random order, 2-5 s apart."""
    plan = ["kill"] * scenario.kills + ["broker"] * scenario.broker_kills + ["postgres"] * scenario.pg_stops
    plan += ["slow"] * scenario.slow_batches + (["receivers"] if scenario.receivers_down_s else [])
    run.rng.shuffle(plan)
    if scenario.crash_points:
        # Both at once and first, on two replicas, while loans still stream: a point nothing passes cannot be hit.
        victims = run.rng.sample(run.wanted(), len(CRASH_POINTS))
        hits = await asyncio.gather(*(crash_at(run, v, p) for v, p in zip(victims, CRASH_POINTS.values(), strict=True)))
        run.faults.update(fault for fault, hit in zip(CRASH_POINTS, hits, strict=True) if hit)
    for fault in plan:
        await asyncio.sleep(run.rng.uniform(2, 5))
        if fault == "kill":
            await kill_and_restart(run, run.rng.choice(run.wanted()))
        elif fault == "broker":
            assert run.broker.process is not None
            run.broker.process.kill()
            run.broker.process.wait()
            await asyncio.sleep(run.rng.uniform(3, 6))
            await asyncio.to_thread(run.broker.start)
        elif fault == "postgres":
            assert run.postgres is not None
            await asyncio.to_thread(run.postgres.pause, "immediate")
            await asyncio.sleep(run.rng.uniform(3, 6))
            await asyncio.to_thread(run.postgres.resume)
        elif fault == "slow":
            await hold_batches(run, run.rng.choice(SERVICES), MAX_POLL_INTERVAL_MS / 1000 * 2)
        else:
            run.receiver.down = run.smtp.down = True
            await asyncio.sleep(scenario.receivers_down_s)
            run.receiver.down = run.smtp.down = False
        run.faults[fault] += 1


async def kill_and_restart(run: Run, victim: ServiceProcess) -> None:
    await victim.kill()
    await asyncio.sleep(run.rng.uniform(1, 3))
    await victim.start()
    run.watchers.add(asyncio.create_task(time_to_partitions(run, victim)))


async def crash_at(run: Run, victim: ServiceProcess, point: str) -> bool:
    """Restart the replica with `point` armed and wait for it to die there; the manager restarts it unarmed."""
    before = victim.fault_hits()
    victim.once = {"HUIFANG_FAULT_POINTS": point}
    await kill_and_restart(run, victim)
    try:
        await wait_for(lambda: victim.fault_hits() > before, 90, f"{victim.service} at {point}")
    except AssertionError:
        await kill_and_restart(run, victim)  # disarmed: nothing reached the point
        return False
    return True


async def hold_batches(run: Run, service: str, seconds: float) -> None:
    """Lock the service's dedupe table: its batches wait on it past max_poll_interval_ms, as a slow handler would."""
    engine = create_async_engine(run.database_url)
    schema = f"{run.settings.huifang_db_schema_prefix}{service}"
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'LOCK TABLE "{schema}".processed_event IN ACCESS EXCLUSIVE MODE'))
            await asyncio.sleep(seconds)
    finally:
        await engine.dispose()


async def churn(run: Run, extras: list[ServiceProcess], times: int, stop: asyncio.Event) -> None:
    """A replica joins, 10 s later it leaves (a clean stop), and so on: rebalances while batches are in hand."""
    for n in range(times):
        if stop.is_set():
            return
        replica = extras[(n // 2) % len(extras)]
        if n % 2 == 0:
            await replica.start()
            run.replicas.append(replica)
            run.faults["join"] += 1
        else:
            run.replicas.remove(replica)
            await replica.stop()
            run.faults["leave"] += 1
        await asyncio.sleep(10)
    for replica in extras:
        if replica in run.replicas:
            run.replicas.remove(replica)
            await replica.stop()


async def supervise(run: Run, stop: asyncio.Event) -> None:
    """What a process manager does: a replica that exited on its own (say, no broker at start) is started again."""
    while not stop.is_set():
        for replica in run.replicas:
            if replica.wanted and not replica.alive and replica.proc is not None:
                await replica.proc.wait()
                replica.note_exit()
                if replica.exits[-1][1] != "fault.point":  # a crash point's death is an injected fault
                    run.faults["exited_and_restarted"] += 1
                await replica.start()
        await asyncio.sleep(1)


async def time_to_partitions(run: Run, replica: ServiceProcess) -> None:
    started = replica.started_at
    try:
        await wait_for(lambda: replica.assigned_at or replica.started_at != started, 120, "partitions")
    except AssertionError:
        return
    if replica.started_at == started and replica.assigned_at is not None:
        run.restarts.append(replica.assigned_at - started)


async def publish_loans(run: Run, loans: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=run.settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for loan in loans:
            envelope = Envelope(
                specversion="1.0", id=str(uuid.uuid4()), source="/los/chaos", type="loan.stage.changed",
                subject=loan, data=loan_event(loan, roles=ROLES),
            )  # fmt: skip
            await producer.send_and_wait(run.settings.topic("loan.stage.v1"), encode(envelope), key=loan.encode())
            await asyncio.sleep(0.3)
    finally:
        await producer.stop()


def officer_emails(run: Run) -> dict[str, set[str]]:
    """Per refused callback, the distinct officer emails the SMTP server took for its refusal (by notification id)."""
    callback_of = {e["id"]: e["data"]["callback_id"] for e in run.tap.events("callback.refused")}
    received = {m.strip("<>").removesuffix("@huifang") for m in run.smtp.message_ids}
    emails: dict[str, set[str]] = defaultdict(set)
    for e in run.tap.events("notification.sent"):
        d = e["data"]
        if d["kind"] == "refusal" and d["channel"] == "email" and d["notification_id"] in received:
            emails[callback_of.get(d["source_event_id"], d["source_event_id"])].add(d["notification_id"])
    return emails


def count(run: Run, loans: list[str]) -> dict[str, int]:
    """Lost and duplicated effects, wrong attempt numbers and calls without notice, from topics and receiver."""
    tap = run.tap
    lost = dup = 0
    per_party: dict[tuple[str, str], set[str]] = defaultdict(set)
    for e in tap.events("callback.scheduled"):
        per_party[(e["data"]["loan_id"], e["data"]["party_id"])].add(e["data"]["callback_id"])
    parties = len(loans) * len(ROLES)
    lost += parties - len(per_party)
    dup += sum(len(ids) - 1 for ids in per_party.values())
    # Acknowledged attempts = recorded attempts (the outcome events, by attempt id).
    recorded = {e["data"]["attempt_id"]: e["data"] for e in tap.events("callback.outcome.recorded")}
    acked = {a.attempt_id: a for a in run.acks}
    lost += len(set(acked) - set(recorded))
    dup += len(set(recorded) - set(acked))
    wrong = sum(1 for a in run.acks if a.recorded_attempt != a.attempt)
    wrong += sum(1 for i, d in recorded.items() if i in acked and d["attempt"] != acked[i].attempt)
    # One callback.refused and one distinct officer webhook per refusal,
    refusals = {a.callback_id for a in run.acks if a.disposition == "refused"}
    refused_events: dict[str, set[str]] = defaultdict(set)
    for e in tap.events("callback.refused"):
        refused_events[e["data"]["callback_id"]].add(e["id"])
    hooks: dict[str, set[str]] = defaultdict(set)
    for hook_id, body in run.receiver.deliveries:
        if body.get("type") == "callback.refused":
            hooks[body["callback_id"]].add(hook_id)
    # And one officer email per refusal: the officer's address may come after the refusal (another topic).
    for kind in (refused_events, hooks, officer_emails(run)):
        lost += sum(1 for cb in refusals if not kind.get(cb))
        dup += sum(len(ids) - 1 for ids in kind.values())
    # One loan.verification.completed per closed loan.
    completed: dict[str, set[str]] = defaultdict(set)
    for e in tap.events("loan.verification.completed"):
        completed[e["data"]["loan_id"]].add(e["id"])
    lost += sum(1 for loan in loans if not completed.get(loan))
    dup += sum(len(ids) - 1 for ids in completed.values())
    # A call (callback.due) before its callback's advance notice, on the same partition of the same topic.
    noticed: set[str] = set()
    without_notice = 0
    for rec in tap.records:
        try:
            event = rec.event
        except ValueError:
            continue
        etype = event.get("type") if isinstance(event, dict) else None
        if etype == "callback.notice.requested":
            noticed.add(event["data"]["callback_id"])
        elif etype == "callback.due" and event["data"]["callback_id"] not in noticed:
            without_notice += 1
    # One notification per source event, recipient and channel; each one sent reached its receiver.
    notes: dict[tuple[str, str, str, str], set[str]] = defaultdict(set)
    sent_ids: dict[str, set[str]] = defaultdict(set)
    for e in tap.events("notification.sent") + tap.events("notification.failed"):
        d = e["data"]
        notes[(d["source_event_id"], d["recipient"], d["channel"], d["kind"])].add(d["notification_id"])
        sent_ids[d["channel"]].add(d["notification_id"])
    dup += sum(len(ids) - 1 for ids in notes.values())
    lost += len({e["data"]["notification_id"] for e in tap.events("notification.failed")})
    received = {
        "webhook": {i for i, _ in run.receiver.deliveries} - {i for i, _ in run.receiver.sms},
        "sms": {i for i, _ in run.receiver.sms},
        "email": {m.strip("<>").removesuffix("@huifang") for m in run.smtp.message_ids},
    }
    failed = {e["data"]["notification_id"] for e in tap.events("notification.failed")}
    lost += sum(len(sent_ids[channel] - failed - ids) for channel, ids in received.items())
    return {
        "loans": len(loans), "parties": parties, "lost": lost, "duplicated": dup, "wrong_attempt": wrong,
        "without_notice": without_notice, "bad_signatures": run.receiver.bad_signatures,
        "unanswered": run.unanswered,
    }  # fmt: skip


async def own_postgres(request: pytest.FixtureRequest, scenario: Scenario) -> tuple[Postgres | None, str]:
    """The session's PostgreSQL, or one of the scenario's own when it is to be stopped."""
    if not scenario.pg_stops:
        return None, request.getfixturevalue("postgres_url")
    server = Postgres(TEST_HOME / f"pg-chaos-{uuid.uuid4().hex[:8]}")
    return server, await asyncio.to_thread(server.start)


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_chaos(
    name: str, tmp_path: Path, receiver: Receiver, smtp: Mailbox, request: pytest.FixtureRequest
) -> None:
    scenario = SCENARIOS[name]
    began = time.monotonic()
    broker = KafkaBroker(tmp_path / "kafka", port=free_port(), controller_port=free_port(), heap="384m")
    await asyncio.to_thread(broker.start)
    token = uuid.uuid4().hex[:8]
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    settings = Settings(
        kafka_bootstrap_servers=broker.bootstrap, huifang_topic_prefix=f"chaos{token}.",
        huifang_db_schema_prefix=f"chaos{token}_", huifang_policy_file=policy, huifang_topic_partitions=6,
    )  # fmt: skip
    replicas: list[ServiceProcess] = []
    extras: list[ServiceProcess] = []
    tap = Tap(settings)
    stop = asyncio.Event()
    manager: asyncio.Task[None] | None = None
    postgres: Postgres | None = None
    try:
        await create_topics(settings)
        key = generate_key()
        pg_url = ""
        if scenario.database == "postgresql":
            postgres, pg_url = await own_postgres(request, scenario)
        for service in SERVICES:
            url = pg_url or f"sqlite+aiosqlite:///{tmp_path / f'{service}.db'}"
            for n in range(scenario.per_service + (1 if scenario.churns else 0)):
                env = env_of(settings, database_url=url, tmp=tmp_path, receiver=receiver, smtp=smtp)
                env |= {"HUIFANG_ENCRYPTION_KEY": key, f"HUIFANG_{service.upper()}_PORT": str(free_port())}
                if scenario.slow_batches:
                    env["HUIFANG_MAX_POLL_INTERVAL_MS"] = str(MAX_POLL_INTERVAL_MS)
                (replicas if n < scenario.per_service else extras).append(ServiceProcess(service, env))
        for replica in replicas:
            await replica.start()
        for replica in replicas:
            await wait_for(lambda replica=replica: replica.assigned_at, 180, f"{replica.service} partitions")
        await tap.start()
        run = Run(name, settings, broker, receiver, smtp, replicas, tap, random.Random(token), postgres, pg_url)
        loans = [f"L-chaos-{token}-{i}" for i in range(scenario.loans)]
        agents = asyncio.create_task(play_agents(run, stop))
        manager = asyncio.create_task(supervise(run, stop))
        churning = churn(run, extras, scenario.churns, stop)
        await asyncio.gather(publish_loans(run, loans), inject(run, scenario), churning)
        faults_over = time.monotonic()

        def settled() -> bool:
            done = {e["data"]["loan_id"] for e in tap.events("loan.verification.completed")}
            refused = {a.callback_id for a in run.acks if a.disposition == "refused"}
            hooked = {b.get("callback_id") for _, b in receiver.deliveries if b.get("type") == "callback.refused"}
            return set(loans) <= done and refused <= hooked and refused <= set(officer_emails(run))

        try:
            await wait_for(settled, 300, "every loan verified and every refusal delivered and emailed")
        except AssertionError:
            alive = {f"{r.service}:{r.env.get(f'HUIFANG_{r.service.upper()}_PORT')}": r.alive for r in replicas}
            tapping = "running" if tap._task and not tap._task.done() else "stopped"
            raise AssertionError(f"not settled: {count(run, loans)}; replicas {alive}; tap {tapping}") from None
        settle = time.monotonic() - faults_over
        await asyncio.sleep(3)  # late duplicates, if any, would land now
        stop.set()
        await agents
        await asyncio.gather(*run.watchers)
        table = count(run, loans) | {
            "faults": sum(n for f, n in run.faults.items() if f != "exited_and_restarted"),
            "faults_by_kind": {f: n for f, n in sorted(run.faults.items()) if f != "exited_and_restarted"},
            "restarted_by_manager": run.faults["exited_and_restarted"],
            "longest_blind_spot_s": round(max(run.restarts, default=0.0), 1),
            "settle_s": round(settle, 1),
            "runtime_s": round(time.monotonic() - began, 1),
        }
        print(f"\nchaos {name}: " + json.dumps(table), flush=True)
        print("exits on their own: " + json.dumps({f"{r.service}": r.exits for r in replicas if r.exits}))
        assert table["lost"] == 0 and table["duplicated"] == 0, table
        assert table["wrong_attempt"] == 0 and table["without_notice"] == 0, table
        assert table["bad_signatures"] == 0 and table["unanswered"] == 0, table
        if scenario.crash_points:  # the duplicate paths were really taken, not only hoped for
            assert all(run.faults[f] >= 1 for f in CRASH_POINTS), run.faults
    finally:
        stop.set()
        if manager is not None:
            await manager  # no restart behind the stops below
        await tap.stop()
        for replica in replicas + extras:
            await replica.stop()
        await asyncio.to_thread(broker.stop)
        if postgres is not None:
            await asyncio.to_thread(postgres.stop)
