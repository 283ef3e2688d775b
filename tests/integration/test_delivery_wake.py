"""The notifier's loops wake on commit, not on the poll: here the notifier polls once a minute.

A refusal's officer webhook and its level-2 escalation must arrive well before the next poll, on
both databases; on PostgreSQL a notification committed elsewhere wakes two sleeping instances.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from pytest_httpserver import HTTPServer

from services.notifier.outbound import queue_notification
from shared.crypto import Cipher, generate_key
from shared.db import Database
from shared.kafka import create_topics
from shared.settings import Settings
from tests.support import Huifang, wait_for

ROOT = Path(__file__).resolve().parents[2]
POLL_SECONDS = 60.0  # the longest poll the settings allow: nothing here may wait for it
WITHIN = 20.0  # far less than the poll, far more than a wake-up needs on a loaded machine


async def _notifier(
    kind: str, url: str | None, bootstrap: str, webhook: HTTPServer, workdir: Path, *, instances: int = 1
) -> Huifang:
    """The notifier alone (`instances` of it on one database), polling once a minute."""
    system = Huifang(
        kind=kind,
        bootstrap=bootstrap,
        database_url=url,
        workdir=workdir,
        webhook=webhook,
        policy=ROOT / "tests" / "policy-notifier.toml",  # level 2 six seconds after level 1
    )
    system.settings = system.settings.model_copy(update={"huifang_timer_poll_seconds": POLL_SECONDS})
    await create_topics(system.settings)
    system.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await system.producer.start()
    await system.tap.start()
    for index in range(instances):
        await system.start_service("notifier")
        if index < instances - 1:
            # Huifang keeps one server per service name: the earlier instances are kept under another.
            system.servers[f"notifier-{index}"] = system.servers.pop("notifier")
    return system


@pytest.fixture(params=["sqlite", "postgresql"])
async def system(
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    webhook_server: HTTPServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Huifang]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    workdir = tmp_path_factory.mktemp(f"wake-{request.param}")
    system = await _notifier(request.param, url, kafka_bootstrap, webhook_server, workdir)
    try:
        yield system
    finally:
        await system.stop()


def refusal(loan_id: str) -> dict[str, Any]:
    return {
        "loan_id": loan_id,
        "callback_id": f"cb-{uuid.uuid4().hex[:8]}",
        "party_id": "P-1",
        "role": "borrower",
        "stage": "final_check",
        "branch_id": "BR-SH-001",
        "attempt": 1,
        "state": "refused",
        "reason_code": "suspected_fraud",
        "agent_id": "A-1",
        "refusals_for_loan": 1,
        "occurred_at": datetime.now(UTC).isoformat(),
    }


def levels(system: Huifang, loan_id: str) -> list[int]:
    """The escalation levels the officer's webhook was told of, in order."""
    hooks = system.webhook_deliveries(loan_id)
    return [body["level"] for _, body, _ in hooks if body.get("type") == "escalation.raised"]


async def test_refusal_hook_and_level_2_arrive_without_waiting_for_the_poll(system: Huifang) -> None:
    loan_id = f"L-{uuid.uuid4().hex[:12]}"
    await system.publish_event("callback.refused", refusal(loan_id), key=loan_id)
    # The loops passed once at start and then sleep for a minute: only a wake-up delivers this in time.
    await wait_for(lambda: levels(system, loan_id) == [1], WITHIN, "the level-1 webhook")
    # Level 2 is due six seconds after level 1: the escalation loop sleeps until then, not a whole poll.
    await wait_for(lambda: levels(system, loan_id) == [1, 2], WITHIN, "the level-2 webhook")
    assert all(headers["X-Huifang-Signature"] for headers, _, _ in system.webhook_deliveries(loan_id))


async def test_a_notification_committed_elsewhere_wakes_sleeping_instances_on_postgresql(
    kafka_bootstrap: str, postgres_url: str, webhook_server: HTTPServer, tmp_path: Path
) -> None:
    system = await _notifier("postgresql", postgres_url, kafka_bootstrap, webhook_server, tmp_path, instances=2)
    settings: Settings = system.settings
    # Another replica's transaction: its own engine on the notifier's schema, no loops of its own,
    # so the only thing that can wake the two sleeping instances is PostgreSQL's NOTIFY on commit.
    writer = Database(
        settings.database_url or "",
        schema=f"{settings.huifang_db_schema_prefix}notifier",
        source="/huifang/notifier",
        cipher=Cipher([generate_key()]),
    )
    loan_id = f"L-{uuid.uuid4().hex[:12]}"
    try:
        async with writer.uow() as uow:
            note = await queue_notification(
                uow=uow,
                source_event_id=str(uuid.uuid4()),
                loan_id=loan_id,
                kind="escalation",
                recipient="officer:EMP-778",
                channel="webhook",
                payload={"type": "escalation.raised", "loan_id": loan_id, "level": 1},
            )
            await uow.commit()
        assert note is not None
        await wait_for(lambda: system.webhook_deliveries(loan_id), WITHIN, "the webhook after NOTIFY")
        [(headers, body, _)] = system.webhook_deliveries(loan_id)  # one instance claimed it, once
        assert headers["X-Huifang-Id"] == note.notification_id and body["loan_id"] == loan_id
    finally:
        await writer.dispose()
        await system.stop()
