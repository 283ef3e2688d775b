"""Fault scenarios (`make test-fault`): the broker or the database goes away and comes back.

Each test owns the part it breaks (its own broker or PostgreSQL), so the shared session
servers stay up for everything else.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from pytest_httpserver import HTTPServer

from cli.devstack import KafkaBroker, Postgres, free_port
from tests.conftest import TEST_HOME
from tests.support import Huifang, loan_event, wait_for

pytestmark = pytest.mark.fault


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    own = KafkaBroker(tmp_path / "kafka", port=free_port(), controller_port=free_port(), heap="384m")
    own.start()
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture
def postgres() -> Iterator[tuple[Postgres, str]]:
    # Under the repo like the session server: the server's own user must be able to reach it.
    own = Postgres(TEST_HOME / f"pg-fault-{uuid.uuid4().hex[:8]}")
    url = own.start()
    try:
        yield own, url
    finally:
        own.stop()


async def readiness(system: Huifang, service: str) -> tuple[int, str]:
    async with httpx.AsyncClient(base_url=system.url(service), timeout=10) as client:
        response = await client.get("/readyz")
    return response.status_code, response.text


async def until_ready(system: Huifang, service: str, *, ready: bool, contains: str = "") -> str:
    async def check() -> str | None:
        status, text = await readiness(system, service)
        return text if (status == 200) == ready and contains in text else None

    result: str = await wait_for(check, within=90.0, what=f"{service} ready={ready} {contains}")
    return result


@pytest.fixture
async def on_own_broker(broker: KafkaBroker, webhook_server: HTTPServer, tmp_path: Path) -> AsyncIterator[Huifang]:
    system = Huifang(
        kind="sqlite", bootstrap=broker.bootstrap, database_url=None, workdir=tmp_path, webhook=webhook_server
    )
    await system.start()
    try:
        yield system
    finally:
        await system.stop()


async def test_kafka_outage_makes_services_unready_then_they_recover(
    on_own_broker: Huifang, broker: KafkaBroker
) -> None:
    system = on_own_broker
    await until_ready(system, "scheduler", ready=True)
    broker.stop()
    reason = await until_ready(system, "scheduler", ready=False, contains="kafka unreachable")
    assert "503" not in reason  # the body names the cause, not just a status
    broker.start()
    await until_ready(system, "scheduler", ready=True)
    loan = f"L-{uuid.uuid4().hex[:12]}"
    await system.publish_event("loan.stage.changed", loan_event(loan), key=loan)
    await system.tap.wait_events("callback.scheduled", loan, count=2, within=90.0)


async def test_database_outage_loses_nothing(
    kafka_bootstrap: str, webhook_server: HTTPServer, postgres: tuple[Postgres, str], tmp_path: Path
) -> None:
    server, url = postgres
    system = Huifang(
        kind="postgresql", bootstrap=kafka_bootstrap, database_url=url, workdir=tmp_path, webhook=webhook_server
    )
    await system.start()
    try:
        await until_ready(system, "scheduler", ready=True)
        server.pause()
        await until_ready(system, "scheduler", ready=False, contains="database unreachable")
        # Published while the database is down: must be processed once it is back, exactly once.
        loan = f"L-{uuid.uuid4().hex[:12]}"
        await system.publish_event("loan.stage.changed", loan_event(loan), key=loan)
        server.resume()
        await until_ready(system, "scheduler", ready=True)
        await system.tap.wait_events("callback.scheduled", loan, count=2, within=90.0)
        async with system.client("scheduler") as client:
            page = (await client.get("/v1/callbacks", params={"loan_id": loan})).json()
        assert len(page["items"]) == 2
    finally:
        await system.stop()


async def test_crashed_consumer_is_reported_and_restarted(huifang: Huifang, monkeypatch: pytest.MonkeyPatch) -> None:
    app_state = _runtime(huifang, "scheduler")
    consumer = app_state.consumer
    assert consumer is not None
    original = consumer._process  # fault injection
    calls = {"n": 0}

    async def explode(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected consumer crash")
        await original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(consumer, "_process", explode)
    loan = f"L-{uuid.uuid4().hex[:12]}"
    await huifang.publish_event("loan.stage.changed", loan_event(loan), key=loan)
    await until_ready(huifang, "scheduler", ready=False, contains="consumer")
    await until_ready(huifang, "scheduler", ready=True)
    # The crashed batch was not committed, so after the restart the event is handled once.
    await huifang.tap.wait_events("callback.scheduled", loan, count=2)
    assert calls["n"] >= 2


def _runtime(system: Huifang, service: str):  # type: ignore[no-untyped-def]
    server = system.servers[service][0]
    return server.config.app.state.runtime  # type: ignore[union-attr]
