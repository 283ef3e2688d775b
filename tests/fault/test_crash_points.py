"""A service killed at its crash points (shared/faults.py) comes back and makes every effect exactly once.

Real processes on the real broker: the relay dies after the broker acknowledged a batch but before the outbox
rows are deleted (the batch goes out twice), and a consumer dies after its database commit but before its
offset commit (the batch comes in twice). The topics show the duplicate; the receivers and APIs show one effect.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.devstack import free_port
from shared.crypto import generate_key
from shared.kafka import create_topics
from shared.settings import Settings
from tests.blackbox import AGENT_KEY, POLICY, SERVICES, Receiver, env_of, receiving
from tests.procs import ServiceProcess
from tests.support import Tap, loan_event, wait_for

pytestmark = pytest.mark.fault


@dataclass
class System:
    settings: Settings
    replicas: dict[str, ServiceProcess]
    receiver: Receiver
    tap: Tap

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.replicas[service].env[f'HUIFANG_{service.upper()}_PORT']}"

    async def consumed(self, service: str, topic: str, result: str) -> float:
        async with httpx.AsyncClient(base_url=self.url(service), timeout=10) as client:
            text = (await client.get("/metrics")).text
        wanted = (f'topic="{self.settings.topic(topic)}"', f'result="{result}"')
        lines = (line for line in text.splitlines() if line.startswith("huifang_events_consumed_total{"))
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if all(w in line for w in wanted))

    async def crash_and_restart(self, service: str, point: str) -> None:
        """Wait for the armed replica to die at `point`, then start it again unarmed."""
        replica = self.replicas[service]
        await wait_for(lambda: not replica.alive, 120, f"{service} to reach {point}")
        assert replica.died_at(point), replica.log[-5:]
        await replica.start()
        await wait_for(lambda: replica.assigned_at, 120, f"{service} partitions after the restart")


@asynccontextmanager
async def system(kafka_bootstrap: str, tmp_path: Path, armed: dict[str, str]) -> AsyncIterator[System]:
    """The three services as processes on SQLite; `armed` maps a service to the crash point of its first run."""
    token = uuid.uuid4().hex[:8]
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap, huifang_topic_prefix=f"crash{token}.", huifang_policy_file=policy
    )
    await create_topics(settings)
    key = generate_key()
    tap = Tap(settings)
    with receiving() as receiver:
        replicas: dict[str, ServiceProcess] = {}
        for service in SERVICES:
            env = env_of(
                settings, database_url=f"sqlite+aiosqlite:///{tmp_path / f'{service}.db'}", tmp=tmp_path,
                receiver=receiver,
            )  # fmt: skip
            env |= {"HUIFANG_ENCRYPTION_KEY": key, f"HUIFANG_{service.upper()}_PORT": str(free_port())}
            replica = ServiceProcess(service, env)
            if service in armed:
                replica.once = {"HUIFANG_FAULT_POINTS": armed[service]}
            replicas[service] = replica
        try:
            for replica in replicas.values():
                await replica.start()
            for replica in replicas.values():
                await wait_for(lambda r=replica: r.assigned_at, 120, f"{replica.service} partitions")
            await tap.start()
            yield System(settings, replicas, receiver, tap)
        finally:
            await tap.stop()
            for replica in replicas.values():
                await replica.stop()


async def publish_loan(found: System, loan: str, roles: tuple[str, ...]) -> None:
    from aiokafka import AIOKafkaProducer

    from shared.events import Envelope, encode

    producer = AIOKafkaProducer(bootstrap_servers=found.settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        envelope = Envelope(
            specversion="1.0", id=str(uuid.uuid4()), source="/los/crash", type="loan.stage.changed", subject=loan,
            data=loan_event(loan, roles=roles),
        )  # fmt: skip
        await producer.send_and_wait(found.settings.topic("loan.stage.v1"), encode(envelope), key=loan.encode())
    finally:
        await producer.stop()


def copies(tap: Tap, type_: str, loan: str) -> Counter[str]:
    """How many times each event id of this type and loan is on its topic."""
    return Counter(e["id"] for e in tap.events(type_, loan))


def distinct(deliveries: list[tuple[str, dict[str, Any]]], keep: Callable[[dict[str, Any]], bool]) -> set[str]:
    return {hook_id for hook_id, body in deliveries if keep(body)}


@pytest.mark.timeout(300)
async def test_relay_killed_between_publish_and_delete_sends_twice_and_the_refusal_reaches_the_officer_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    async with system(kafka_bootstrap, tmp_path, {"outcomes": "outbox.published"}) as found:
        loan = f"L-relay-{uuid.uuid4().hex[:8]}"
        await publish_loan(found, loan, ("borrower",))
        due = (await found.tap.wait_events("callback.due", loan, within=60))[0]["data"]
        body = {"disposition": "refused", "reason_code": "distrust", "agent_id": "A-crash", "attempt": due["attempt"]}
        async with httpx.AsyncClient(base_url=found.url("outcomes"), timeout=10) as client:
            response = await client.post(
                f"/v1/callbacks/{due['callback_id']}/attempts", json=body,
                headers={"Authorization": f"Bearer {AGENT_KEY}", "Idempotency-Key": f"relay-{loan}"},
            )  # fmt: skip
        assert response.status_code == 201, response.text
        # The relay published the attempt's events and died before deleting their outbox rows.
        await found.crash_and_restart("outcomes", "outbox.published")
        await wait_for(lambda: set(copies(found.tap, "callback.refused", loan).values()) == {2}, 60, "the resend")
        # The notifier got the refusal twice and kept one; the officer hears of it once.
        await wait_for(
            lambda: found.consumed("notifier", "callback.refused.v1", "duplicate"), 60, "the notifier to see it again"
        )  # fmt: skip
        await wait_for(lambda: distinct(found.receiver.deliveries, lambda b: b.get("type") == "callback.refused"),
                       60, "the officer's webhook")  # fmt: skip
        refused = distinct(found.receiver.deliveries, lambda b: b.get("type") == "callback.refused")
        assert len(refused) == 1
        assert len(copies(found.tap, "callback.outcome.recorded", loan)) == 1  # one attempt, sent twice
        async with httpx.AsyncClient(base_url=found.url("outcomes"), timeout=10) as client:
            attempts = await client.get(
                f"/v1/callbacks/{due['callback_id']}/attempts", headers={"Authorization": f"Bearer {AGENT_KEY}"}
            )
        assert [a["attempt"] for a in attempts.json()] == [due["attempt"]]


@pytest.mark.timeout(300)
async def test_consumers_killed_between_database_and_offset_commit_redeliver_and_do_each_thing_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    armed = {"scheduler": "consumer.committed", "notifier": "consumer.committed"}
    async with system(kafka_bootstrap, tmp_path, armed) as found:
        loan = f"L-consumer-{uuid.uuid4().hex[:8]}"
        roles = ("borrower", "guarantor")
        await publish_loan(found, loan, roles)
        # The scheduler committed the loan's callbacks, then died before the offset: the loan comes in again.
        await found.crash_and_restart("scheduler", "consumer.committed")
        await wait_for(
            lambda: found.consumed("scheduler", "loan.stage.v1", "duplicate"), 60, "the loan redelivered"
        )  # fmt: skip
        # The notifier died the same way on its first batch; its redelivery is absorbed too.
        await found.crash_and_restart("notifier", "consumer.committed")
        await wait_for(lambda: found.consumed("notifier", "loan.stage.v1", "duplicate"), 60, "notifier redelivery")
        scheduled = found.tap.events("callback.scheduled", loan)
        assert len({e["data"]["callback_id"] for e in scheduled}) == len(roles)  # one callback per party
        # One advance notice per party reaches the SMS gateway, once each.
        await wait_for(lambda: len(found.receiver.sms) >= len(roles), 90, "one notice SMS per party")
        await found.tap.wait_events("callback.due", loan, count=len(roles), within=60)
        assert len({hook_id for hook_id, _ in found.receiver.sms}) == len(roles)
        noticed = {e["data"]["callback_id"] for e in found.tap.events("callback.notice.requested", loan)}
        assert len(noticed) == len(roles)
