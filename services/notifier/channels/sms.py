"""SMS channel: a signed JSON POST to the SMS gateway (`HUIFANG_SMS_WEBHOOK_URL`)."""

from __future__ import annotations

import httpx

from services.notifier.channels.webhook import DeliveryResult, deliver


async def send_sms(
    *, client: httpx.AsyncClient, url: str, secret: str, notification_id: str, to: str, text: str
) -> DeliveryResult:
    """Hand one text to the gateway: `{"id", "to", "text"}`, signed like every webhook."""
    return await deliver(client, url, secret, notification_id, {"id": notification_id, "to": to, "text": text})
