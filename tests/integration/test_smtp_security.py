"""The email channel against a real local SMTP server (aiosmtpd): login, and no downgrade from STARTTLS."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from cli.devstack import free_port
from services.notifier.channels.email import build_message, send_email


class Inbox:
    def __init__(self) -> None:
        self.delivered: list[bytes] = []
        self.logins: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.delivered.append(envelope.content)
        return "250 Message accepted"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if isinstance(data, LoginPassword) and (data.login, data.password) == (b"huifang", b"right-password"):
            self.logins.append(data.login.decode())
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


@pytest.fixture
def server() -> Iterator[tuple[Controller, Inbox]]:
    """A plaintext SMTP server (it offers no STARTTLS) that accepts one login."""
    inbox = Inbox()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=inbox.authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield controller, inbox
    finally:
        controller.stop()


def message() -> Any:
    return build_message(
        sender="huifang@bank.example", to="o@bank.example", subject="s", body="b", notification_id="n1"
    )


async def test_starttls_is_required_when_asked_for_no_plaintext_fallback(server: tuple[Controller, Inbox]) -> None:
    controller, inbox = server
    result = await send_email(host="127.0.0.1", port=controller.port, message=message(), timeout_s=5, tls="starttls")
    assert result.outcome != "ok"
    assert inbox.delivered == []


async def test_the_configured_login_is_used(server: tuple[Controller, Inbox]) -> None:
    controller, inbox = server

    async def send(password: str) -> str:
        result = await send_email(
            host="127.0.0.1",
            port=controller.port,
            message=message(),
            timeout_s=5,
            tls="none",
            username="huifang",
            password=password,
        )
        return result.outcome

    assert await send("right-password") == "ok"
    assert inbox.logins == ["huifang"] and len(inbox.delivered) == 1
    assert await send("wrong") == "permanent"
    assert len(inbox.delivered) == 1
