"""Email channel: one plain-text message over SMTP (aiosmtplib)."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Literal

import aiosmtplib

from services.notifier.channels.webhook import DeliveryResult


def build_message(*, sender: str, to: str, subject: str, body: str, notification_id: str) -> EmailMessage:
    """A UTF-8 plain-text email whose Message-ID lets a mailbox drop a redelivered copy."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{notification_id}@huifang>"
    message.set_content(body)
    return message


def classify_smtp(code: int) -> DeliveryResult:
    """SMTP's own rule: 4xx is transient (try again), 5xx is permanent."""
    if code >= 500:
        return DeliveryResult("permanent", status_code=code, error=f"smtp {code}")
    return DeliveryResult("retryable", status_code=code, error=f"smtp {code}")


SmtpTls = Literal["starttls", "tls", "none"]


async def send_email(
    *,
    host: str,
    port: int,
    message: EmailMessage,
    timeout_s: float,
    tls: SmtpTls = "starttls",
    username: str | None = None,
    password: str | None = None,
) -> DeliveryResult:
    """Send one email; classify the result so the caller can retry or give up."""
    # Error texts from the server may echo the address: only codes and exception names leave here.
    try:
        # start_tls=True insists on STARTTLS: a server (or a man in the middle) that does not offer it
        # gets no mail, where aiosmtplib's default would quietly send in plaintext.
        await aiosmtplib.send(
            message,
            hostname=host,
            port=port,
            timeout=timeout_s,
            use_tls=tls == "tls",
            start_tls=tls == "starttls",
            username=username,
            password=password,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        return classify_smtp(min((r.code for r in exc.recipients), default=550))
    except aiosmtplib.SMTPResponseException as exc:
        return classify_smtp(exc.code)
    except (aiosmtplib.SMTPException, OSError) as exc:
        # Timeouts, refused connections, dropped sessions: the server may be back soon.
        return DeliveryResult("retryable", error=f"smtp transport: {type(exc).__name__}")
    return DeliveryResult("ok")
