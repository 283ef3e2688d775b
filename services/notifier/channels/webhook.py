"""Webhook channel: signed JSON POSTs (Standard Webhooks signature scheme, our header names)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from shared.tracing import trace_context

Outcome = Literal["ok", "retryable", "permanent"]
RETRYABLE_STATUS = frozenset({408, 425, 429})


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str,
    msg_id: str,
    timestamp: int | str,
    body: bytes,
    signature: str,
    *,
    tolerance_s: int = 300,
    now: float | None = None,
) -> bool:
    """What a receiver does: check the timestamp is fresh, then any `v1,` signature in the header."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    # Both directions: an old timestamp is a replay, a far-future one would stay valid too long.
    if abs(current - ts) > tolerance_s:
        return False
    expected = sign(secret, msg_id, ts, body).encode()
    # The header may carry several space-separated signatures during secret rotation.
    return any(hmac.compare_digest(expected, candidate.encode()) for candidate in signature.split())


@dataclass(frozen=True)
class DeliveryResult:
    outcome: Outcome
    status_code: int | None = None
    error: str | None = None  # short, never the payload or the response body

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def retryable(self) -> bool:
        return self.outcome == "retryable"


async def deliver(
    client: httpx.AsyncClient, url: str, secret: str, notification_id: str, payload: dict[str, Any]
) -> DeliveryResult:
    """POST one notification; classify the result so the caller can retry or give up."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "X-Huifang-Id": notification_id,
        "X-Huifang-Timestamp": str(timestamp),
        "X-Huifang-Signature": sign(secret, notification_id, timestamp, body),
        # W3C trace context (`traceparent`, `tracestate`) when a trace is running: the receiver can join it.
        **trace_context(),
    }
    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.TimeoutException as exc:
        return DeliveryResult("retryable", error=f"timeout: {type(exc).__name__}")
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        return DeliveryResult("permanent", error=f"bad webhook url: {type(exc).__name__}")
    except httpx.HTTPError as exc:
        return DeliveryResult("retryable", error=f"transport: {type(exc).__name__}")
    code = response.status_code
    if 200 <= code < 300:
        return DeliveryResult("ok", status_code=code)
    if code >= 500 or code in RETRYABLE_STATUS:
        return DeliveryResult("retryable", status_code=code, error=f"http {code}")
    return DeliveryResult("permanent", status_code=code, error=f"http {code}")
