"""What the black-box tests (chaos, crash points) share: the policy, the bank's signed receivers, the env."""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from cli.devstack import free_port
from services.notifier.channels.webhook import verify
from shared.settings import Settings

SERVICES = ("scheduler", "outcomes", "notifier")
ROLES = ("borrower", "co_borrower", "guarantor")
SECRET = "chaos-webhook-secret"
AGENT_KEY = "chaos-agent"
POLICY = """
[notice]
lead = "PT3S"
quiet_start = "00:00"
quiet_end = "00:00"

[attempts]
max_calls = 3
min_gap = "PT1S"
day_parts = []

[calling_hours]
start = "00:00"
end = "24:00"
holidays = ""
"""


@dataclass
class Receiver:
    """The bank's webhook and SMS endpoints: checks each signature, records each delivery, and can be down."""

    server: HTTPServer
    down: bool = False
    deliveries: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (X-Huifang-Id, body)
    sms: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # the SMS gateway's share of them
    bad_signatures: int = 0

    def handle(self, request: Request) -> Response:
        if self.down:
            return Response("down", status=503)
        raw = request.get_data()
        headers = request.headers
        if not verify(SECRET, headers.get("X-Huifang-Id", ""), headers.get("X-Huifang-Timestamp", ""), raw,
                      headers.get("X-Huifang-Signature", "")):  # fmt: skip
            self.bad_signatures += 1
            return Response("bad signature", status=401)
        delivery = (headers.get("X-Huifang-Id", ""), json.loads(raw))
        self.deliveries.append(delivery)
        if request.path.endswith("/sms"):
            self.sms.append(delivery)
        return Response("ok")


@contextmanager
def receiving() -> Iterator[Receiver]:
    server = HTTPServer(host="127.0.0.1", port=free_port())
    found = Receiver(server)
    server.expect_request("/hooks/huifang", method="POST").respond_with_handler(found.handle)
    server.expect_request("/hooks/sms", method="POST").respond_with_handler(found.handle)
    server.start()
    try:
        yield found
    finally:
        server.clear()
        server.stop()


@dataclass
class Mailbox:
    """The bank's SMTP server: records each message's Message-ID, and can be down (451, try again later)."""

    port: int
    down: bool = False
    message_ids: list[str] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.down:
            return "451 4.3.0 down for the test"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.message_ids.append(str(parsed["Message-ID"]))
        return "250 Message accepted"


@contextmanager
def mailbox() -> Iterator[Mailbox]:
    from aiosmtpd.controller import Controller

    found = Mailbox(free_port())
    controller = Controller(found, hostname="127.0.0.1", port=found.port)
    controller.start()
    try:
        yield found
    finally:
        controller.stop()


def env_of(
    settings: Settings, *, database_url: str, tmp: Path, receiver: Receiver, smtp: Mailbox | None = None
) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": database_url,
        "HUIFANG_TOPIC_PREFIX": settings.huifang_topic_prefix,
        "HUIFANG_DB_SCHEMA_PREFIX": settings.huifang_db_schema_prefix,
        "HUIFANG_POLICY_FILE": str(settings.huifang_policy_file),
        "HUIFANG_API_KEYS": f"agent:{AGENT_KEY}",
        "HUIFANG_ENV": "test",
        "HUIFANG_DATA_DIR": str(tmp),
        "HUIFANG_TIMER_POLL_SECONDS": "0.2",
        "HUIFANG_NOTIFY_WEBHOOK_URL": receiver.server.url_for("/hooks/huifang"),
        "HUIFANG_SMS_WEBHOOK_URL": receiver.server.url_for("/hooks/sms"),
        "HUIFANG_WEBHOOK_SECRET": SECRET,
        "HUIFANG_NOTIFY_RETRY_BASE_SECONDS": "0.5",
        "HUIFANG_WEBHOOK_TIMEOUT_SECONDS": "2",
    } | (smtp_env(smtp) if smtp else {})


def smtp_env(smtp: Mailbox) -> dict[str, str]:
    return {"HUIFANG_SMTP_HOST": "127.0.0.1", "HUIFANG_SMTP_PORT": str(smtp.port), "HUIFANG_SMTP_TLS": "none"}
