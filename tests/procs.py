"""Service processes for black-box tests: `huifang run <service>` with its JSON log read line by line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HUIFANG = str(Path(sys.executable).parent / "huifang")


@dataclass
class ServiceProcess:
    """One replica of one service; its environment (port, instance id) stays the same across restarts."""

    service: str
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    assigned_at: float | None = None  # monotonic time of the first assignment with partitions since start
    log: list[dict[str, Any]] = field(default_factory=list)
    once: dict[str, str] = field(default_factory=dict)  # more environment for the next start only
    wanted: bool = False  # started and not stopped on purpose: a process manager would bring it back
    exits: list[tuple[int | None, str]] = field(default_factory=list)  # (exit code, last log event) of each end
    _reader: asyncio.Task[None] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start(self) -> None:
        async with self._lock:
            if self.alive:
                return  # one process per replica, even when a restart races another
            await self._spawn()

    async def _spawn(self) -> None:
        self.wanted = True
        self.assigned_at = None
        self.started_at = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            HUIFANG, "run", self.service, env={**os.environ, **self.env, **self.once}, cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read(self.proc))
        self.once = {}

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(line, dict):
                continue
            self.log.append(line)
            if line.get("event") == "consumer.assigned" and line.get("partitions", 0) > 0 and self.assigned_at is None:
                self.assigned_at = time.monotonic()

    async def kill(self) -> None:
        """kill -9: no drain, no leave, no offset commit."""
        await self._end(signal.SIGKILL)

    async def stop(self) -> None:
        """SIGTERM: the clean stop a process manager sends."""
        await self._end(signal.SIGTERM)

    async def _end(self, sig: int) -> None:
        async with self._lock:
            self.wanted = False
            if self.proc is None or self.proc.returncode is not None:
                return
            self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
            if self._reader is not None:
                await self._reader

    def fault_hits(self) -> int:
        """How many of this replica's processes died at a crash point so far."""
        return sum(1 for line in self.log if line.get("event") == "fault.point")

    def died_at(self, point: str) -> bool:
        """This process ended by the crash point `point` (shared/faults.py)."""
        ended = self.proc is not None and self.proc.returncode == -signal.SIGKILL
        return ended and any(line.get("event") == "fault.point" and line.get("point") == point for line in self.log)

    def note_exit(self) -> None:
        """Remember how a process that ended on its own ended."""
        last = next((str(line.get("event")) for line in reversed(self.log) if line.get("level") != "info"), "")
        self.exits.append((self.proc.returncode if self.proc else None, last))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None
