"""The party's page links (CONTRACT.md 3.1): signed tokens, the anti-forgery field, and the caller code.

The scheduler signs a link; outcomes verifies it. A token is `callback_id.expiry.signature`: it names
one callback and is valid until the callback's deadline (HMAC-SHA256 with HUIFANG_LINK_SECRET).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path

from shared.crypto import kept_secret

_TOKEN = re.compile(r"^([A-Za-z0-9._:-]{1,64})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})$")


def caller_code() -> str:
    """Six random digits the agent says at the start of the call (fixed per callback)."""
    return f"{secrets.randbelow(1_000_000):06d}"


def _mac(secret: bytes, message: str) -> str:
    digest = hmac.new(secret, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(*, secret: bytes, callback_id: str, expires_at: datetime) -> str:
    """A token naming one callback, valid until `expires_at`."""
    body = f"{callback_id}.{int(expires_at.timestamp())}"
    return f"{body}.{_mac(secret, 'link:' + body)}"


def verify(*, secret: bytes, token: str, now: datetime | None = None) -> str | None:
    """The callback id a token names, or None when it is malformed, tampered with or expired."""
    match = _TOKEN.match(token)
    if match is None:
        return None
    callback_id, expires, mac = match.groups()
    if not hmac.compare_digest(mac, _mac(secret, f"link:{callback_id}.{expires}")):
        return None
    if (now or datetime.now(UTC)).timestamp() >= int(expires):
        return None
    return callback_id


def form_field(*, secret: bytes, token: str) -> str:
    """The anti-forgery value a page's form carries, bound to its token."""
    return _mac(secret, "form:" + token)


def page_url(*, public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/p/{token}"


def link_secret(configured: str | None, data_dir: Path, *, allow_generate: bool) -> bytes:
    """The configured link secret, or in development one kept under the data directory."""
    if configured:
        return configured.encode()
    if not allow_generate:
        raise ValueError("HUIFANG_LINK_SECRET is required outside development")
    return kept_secret(data_dir / "link.key", make=lambda: secrets.token_urlsafe(32)).encode()
