"""A killed consumer process that comes back takes its partitions back at once (static membership)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from cli.devstack import free_port
from shared.crypto import generate_key
from shared.kafka import create_topics
from shared.settings import Settings
from tests.procs import ServiceProcess
from tests.support import wait_for

SESSION_MS = 45_000  # long on purpose: a restart that has to wait out the dead member is unmistakable


@pytest.mark.timeout(300)
async def test_restarted_consumer_gets_partitions_before_the_dead_member_expires(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"blind{uuid.uuid4().hex[:8]}."
    await create_topics(Settings(kafka_bootstrap_servers=kafka_bootstrap, huifang_topic_prefix=prefix))
    replica = ServiceProcess(
        "outcomes",
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'outcomes.db'}",
            "HUIFANG_TOPIC_PREFIX": prefix,
            "HUIFANG_ENCRYPTION_KEY": generate_key(),
            "HUIFANG_API_KEYS": "agent:blind-agent",
            "HUIFANG_ENV": "test",
            "HUIFANG_DATA_DIR": str(tmp_path),
            "HUIFANG_OUTCOMES_PORT": str(free_port()),
            "HUIFANG_SESSION_TIMEOUT_MS": str(SESSION_MS),
        },
    )
    await replica.start()
    try:
        await wait_for(lambda: replica.assigned_at, 120, "first assignment")
        await replica.kill()
        killed_at = time.monotonic()
        await replica.start()
        await wait_for(lambda: replica.assigned_at, 120, "assignment after the restart")
        assert replica.assigned_at is not None
        blind = replica.assigned_at - killed_at
        start = replica.assigned_at - replica.started_at
        print(f"blind spot after kill -9: {blind:.2f} s, of which {start:.2f} s from the restart's spawn")
        # Without a stable group_instance_id the new member waits for the dead one's session to end (30 s before
        # this setting existed, 45 s here); a static member takes its partitions back as soon as it joins.
        assert blind < SESSION_MS / 1000 / 2
    finally:
        await replica.stop()
