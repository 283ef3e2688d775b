"""Webhook signatures: what a receiver of our notifications checks (pure, no I/O)."""

from __future__ import annotations

import base64
import hashlib
import hmac

from services.notifier.channels.webhook import sign, verify

SECRET = "s3cr3t-for-tests"
MSG_ID = "3f1d2c3b-0000-4000-8000-000000000001"
NOW = 1_764_000_000
BODY = b'{"type":"callback.refused","loan_id":"L-2026-000123","reason_code":"distrust"}'


def test_signature_is_standard_webhooks_v1() -> None:
    expected = hmac.new(SECRET.encode(), f"{MSG_ID}.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    assert sign(SECRET, MSG_ID, NOW, BODY) == "v1," + base64.b64encode(expected).decode()


def test_receiver_accepts_genuine_signature() -> None:
    signature = sign(SECRET, MSG_ID, NOW, BODY)
    assert verify(SECRET, MSG_ID, NOW, BODY, signature, now=NOW + 5)
    assert verify(SECRET, MSG_ID, str(NOW), BODY, signature, now=NOW)  # header values arrive as text


def test_receiver_accepts_any_of_several_signatures() -> None:
    header = sign("old-secret", MSG_ID, NOW, BODY) + " " + sign(SECRET, MSG_ID, NOW, BODY)
    assert verify(SECRET, MSG_ID, NOW, BODY, header, now=NOW)


def test_tampered_body_is_rejected() -> None:
    signature = sign(SECRET, MSG_ID, NOW, BODY)
    assert not verify(SECRET, MSG_ID, NOW, BODY.replace(b"distrust", b"other"), signature, now=NOW)


def test_other_message_id_is_rejected() -> None:
    signature = sign(SECRET, MSG_ID, NOW, BODY)
    assert not verify(SECRET, "another-id", NOW, BODY, signature, now=NOW)


def test_other_secret_is_rejected() -> None:
    signature = sign("someone-else", MSG_ID, NOW, BODY)
    assert not verify(SECRET, MSG_ID, NOW, BODY, signature, now=NOW)


def test_stale_replay_is_rejected() -> None:
    signature = sign(SECRET, MSG_ID, NOW, BODY)
    assert verify(SECRET, MSG_ID, NOW, BODY, signature, now=NOW + 300)
    assert not verify(SECRET, MSG_ID, NOW, BODY, signature, now=NOW + 301)
    assert not verify(SECRET, MSG_ID, NOW, BODY, signature, now=NOW + 3600, tolerance_s=300)


def test_timestamp_from_the_future_is_rejected() -> None:
    signature = sign(SECRET, MSG_ID, NOW + 3600, BODY)
    assert not verify(SECRET, MSG_ID, NOW + 3600, BODY, signature, now=NOW)


def test_moved_timestamp_is_rejected() -> None:
    # A replay with a fresh timestamp header but the old signature must fail.
    signature = sign(SECRET, MSG_ID, NOW, BODY)
    assert not verify(SECRET, MSG_ID, NOW + 1000, BODY, signature, now=NOW + 1000)


def test_malformed_headers_are_rejected() -> None:
    assert not verify(SECRET, MSG_ID, "not-a-number", BODY, sign(SECRET, MSG_ID, NOW, BODY), now=NOW)
    assert not verify(SECRET, MSG_ID, NOW, BODY, "", now=NOW)
    assert not verify(SECRET, MSG_ID, NOW, BODY, "v1,AAAA", now=NOW)
