"""Dashboard sessions: a cookie signed with the supervisor's own key, naming a session id that logout revokes.

Revoking the key ends every session it signed; logging out ends one session, on every replica, through
the `revoked_session` table.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from services.outcomes.models import RevokedSession
from shared.db import UnitOfWork, utcnow
from shared.web import ROLE_RANK, Keyring, key_id

COOKIE = "huifang_session"
LIFETIME_S = 8 * 3600


@dataclass(frozen=True)
class Session:
    role: str
    key_id: str
    session_id: str
    expires: int


def _mac(key: str, payload: bytes) -> bytes:
    # A per-key signing secret: no new secret to configure, and every replica can check it.
    secret = hashlib.sha256(b"huifang-dashboard-session:" + key.encode()).digest()
    return hmac.new(secret, payload, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(*, keyring: Keyring, key: str, role: str, now: float | None = None) -> str:
    """A cookie value for a new session of a login with `key`, valid for LIFETIME_S."""
    expires = int((now or time.time()) + LIFETIME_S)
    claims = {"s": uuid.uuid4().hex, "k": key_id(key, secret=keyring.secret), "r": role, "exp": expires}
    payload = json.dumps(claims, separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_mac(key, payload))}"


def verify(*, keyring: Keyring, cookie: str | None, now: float | None = None) -> Session | None:
    """The session in the cookie, if signed by a supervisor-or-better key still configured and not expired.

    Revocation by logout is checked apart, against the database: see `revoked`.
    """
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
    sid, fingerprint = claims.get("s"), claims.get("k")
    if not isinstance(sid, str) or not isinstance(fingerprint, str):
        return None
    entry = keyring.by_id(fingerprint)
    if entry is None or not hmac.compare_digest(_mac(entry.key, payload), given):
        return None
    if ROLE_RANK[entry.role] < ROLE_RANK["supervisor"]:
        return None
    return Session(role=entry.role, key_id=fingerprint, session_id=sid, expires=claims["exp"])


async def revoked(*, uow: UnitOfWork, session: Session) -> bool:
    """Whether the session was ended by logging out."""
    return await uow.session.get(RevokedSession, session.session_id) is not None


async def revoke(*, uow: UnitOfWork, session: Session) -> None:
    """End the session on every replica; forget revocations of sessions that have expired anyway."""
    now = utcnow()
    table = RevokedSession.__table__  # type: ignore[attr-defined]
    await uow.session.execute(sa.delete(table).where(table.c.expires_at < now))
    if await uow.session.get(RevokedSession, session.session_id) is None:
        uow.session.add(
            RevokedSession(session_id=session.session_id, expires_at=datetime.fromtimestamp(session.expires, UTC))
        )
