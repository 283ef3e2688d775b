"""`huifang broker` stops the Kafka broker on SIGTERM (a process manager's stop) as on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from cli.devstack import free_port, kafka_libs, port_open
from shared.settings import ROOT
from tests.support import wait_for

pytestmark = pytest.mark.fault
HUIFANG = str(Path(sys.executable).parent / "huifang")


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the broker's JVM runs in a session of its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def two_free_ports() -> int:
    """A port whose next one is free too: the broker's controller listens on port + 1."""
    while True:
        port = free_port()
        if port < 65535 and not port_open("127.0.0.1", port + 1):
            return port


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_the_broker_command_stops_kafka_on_the_signal(tmp_path: Path, sig: signal.Signals) -> None:
    libs = kafka_libs(tmp_path)
    libs.parent.mkdir(parents=True)
    libs.symlink_to(kafka_libs(ROOT / ".local"))  # the jars `make setup` fetched, not a second download
    port = two_free_ports()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUIFANG_", "KAFKA_"))}
    env |= {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}", "HUIFANG_DATA_DIR": str(tmp_path)}
    wrapper = await asyncio.create_subprocess_exec(
        HUIFANG, "broker", env=env, cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    jvm: list[int] = []
    try:
        await wait_for(lambda: port_open("127.0.0.1", port), 120, "the broker's port")
        jvm = children(wrapper.pid)
        assert jvm and all(alive(pid) for pid in jvm)
        wrapper.send_signal(sig)
        await asyncio.wait_for(wrapper.wait(), 60)
        await wait_for(lambda: not any(alive(pid) for pid in jvm), 60, "the broker's JVM to end")
        assert not port_open("127.0.0.1", port)
        assert wrapper.returncode == 0
    finally:
        for pid in jvm:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if wrapper.returncode is None:
            wrapper.kill()
            await wrapper.wait()
