"""schemathesis against each running service's OpenAPI document: generated requests never get a 5xx.

The services run in this process on 127.0.0.1; schemathesis runs as its own processes (one per service,
side by side), bounded in examples and time, with an admin key so that requests reach the handlers, from
an address of its own. PostgreSQL is the stricter database (it refuses NUL bytes and over-long values
that SQLite stores), so the run uses it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.support import KEYS, Huifang

SERVICES = ("scheduler", "outcomes", "notifier")
MAX_EXAMPLES = 10
MAX_SECONDS = 15


async def schemathesis(huifang: Huifang, service: str, workdir: Path) -> tuple[int, str]:
    """Run `st run` against one service; its exit code and output."""
    st = Path(sys.executable).parent / "st"
    process = await asyncio.create_subprocess_exec(
        str(st),
        "run",
        f"{huifang.url(service)}/openapi.json",
        "--checks=not_a_server_error",
        f"--max-examples={MAX_EXAMPLES}",
        f"--max-time={MAX_SECONDS}",
        "--seed=9",
        "--workers=1",
        "--request-timeout=10",
        "--exclude-path=/readyz",  # 503 there is its contract: not ready, with the reason
        "--header",
        f"Authorization: Bearer {KEYS['admin']}",
        "--header",
        "X-Forwarded-For: 10.250.250.9",
        "--report-dir",
        str(workdir),
        cwd=workdir,  # schemathesis keeps a cache in its working directory
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"SCHEMATHESIS_TELEMETRY": "false", "PATH": str(st.parent), "HOME": str(workdir)},
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=MAX_SECONDS + 90)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


@pytest.mark.parametrize("huifang", ["postgresql"], indirect=True)
async def test_no_generated_request_gets_a_server_error(huifang: Huifang, tmp_path: Path) -> None:
    for service in SERVICES:
        (tmp_path / service).mkdir()
    runs = await asyncio.gather(*(schemathesis(huifang, s, tmp_path / s) for s in SERVICES))
    for service, (code, output) in zip(SERVICES, runs, strict=True):
        assert code == 0, f"{service}:\n{output[-6000:]}"
        assert "passed" in output.lower(), f"{service}:\n{output[-2000:]}"
