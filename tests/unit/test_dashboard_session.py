"""Dashboard session cookies: signed with the key that logged in, expiring, and only for supervisors."""

from __future__ import annotations

from services.outcomes.dashboard import session

KEYS = {"sup-key-1": "supervisor", "adm-key-1": "admin", "agt-key-1": "agent"}


def test_a_signed_cookie_verifies_to_its_role() -> None:
    cookie = session.sign(key="sup-key-1", role="supervisor", now=1000.0)
    found = session.verify(keys=KEYS, cookie=cookie, now=1001.0)
    assert found == session.Session(role="supervisor", key_id=session.key_id("sup-key-1"))
    assert "sup-key-1" not in cookie


def test_an_expired_cookie_is_no_session() -> None:
    cookie = session.sign(key="adm-key-1", role="admin", now=1000.0)
    assert session.verify(keys=KEYS, cookie=cookie, now=1000.0 + session.LIFETIME_S + 1) is None


def test_a_revoked_key_ends_its_sessions() -> None:
    cookie = session.sign(key="sup-key-1", role="supervisor", now=1000.0)
    assert session.verify(keys={"adm-key-1": "admin"}, cookie=cookie, now=1001.0) is None


def test_an_agent_key_never_makes_a_session() -> None:
    cookie = session.sign(key="agt-key-1", role="agent", now=1000.0)
    assert session.verify(keys=KEYS, cookie=cookie, now=1001.0) is None


def test_a_cookie_signed_with_another_key_is_refused() -> None:
    forged = session.sign(key="not-configured", role="admin", now=1000.0)
    payload = session.sign(key="sup-key-1", role="supervisor", now=1000.0).split(".")[0]
    assert session.verify(keys=KEYS, cookie=f"{payload}.{forged.split('.')[1]}", now=1001.0) is None


def test_garbage_is_no_session() -> None:
    for cookie in (None, "", "abc", "a.b", "!!!.???", "e30.e30"):
        assert session.verify(keys=KEYS, cookie=cookie, now=1001.0) is None
