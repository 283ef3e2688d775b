"""Dashboard sessions: a cookie signed with the supervisor's own key, so revoking the key ends them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass

from shared.web import ROLE_RANK

COOKIE = "huifang_session"
LIFETIME_S = 8 * 3600


@dataclass(frozen=True)
class Session:
    role: str
    key_id: str


def key_id(key: str) -> str:
    """The short fingerprint of an API key that request logs already use."""
    return uuid.uuid5(uuid.NAMESPACE_OID, key).hex[:8]


def _mac(key: str, payload: bytes) -> bytes:
    # A per-key signing secret: no new secret to configure, and every replica can check it.
    secret = hashlib.sha256(b"huifang-dashboard-session:" + key.encode()).digest()
    return hmac.new(secret, payload, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(*, key: str, role: str, now: float | None = None) -> str:
    """A cookie value for a login with `key`, valid for LIFETIME_S."""
    expires = int((now or time.time()) + LIFETIME_S)
    payload = json.dumps({"k": key_id(key), "r": role, "exp": expires}, separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_mac(key, payload))}"


def verify(*, keys: dict[str, str], cookie: str | None, now: float | None = None) -> Session | None:
    """The session in the cookie, if it is signed by a supervisor-or-better key still configured and not expired."""
    if not cookie or "." not in cookie:
        return None
    try:
        encoded, mac = cookie.split(".", 1)
        payload = _unb64(encoded)
        claims = json.loads(payload)
        given = _unb64(mac)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int) or claims["exp"] < (now or time.time()):
        return None
    for key, role in keys.items():
        if key_id(key) == claims.get("k") and hmac.compare_digest(_mac(key, payload), given):
            return Session(role=role, key_id=claims["k"]) if ROLE_RANK[role] >= ROLE_RANK["supervisor"] else None
    return None
