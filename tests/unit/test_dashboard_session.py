"""Dashboard session cookies: signed with the key that logged in, expiring, only for supervisors, one id each."""

from __future__ import annotations

from services.outcomes.dashboard import session
from shared.settings import parse_key_entries
from shared.web import Keyring, key_id

SECRET = b"fingerprint-secret-for-tests"
KEYRING = Keyring(
    parse_key_entries("supervisor:sup-1:sup-key-1,admin:adm-1:adm-key-1,agent:agt-1:agt-key-1"), secret=SECRET
)


def test_a_signed_cookie_verifies_to_its_role() -> None:
    cookie = session.sign(keyring=KEYRING, key="sup-key-1", role="supervisor", now=1000.0)
    found = session.verify(keyring=KEYRING, cookie=cookie, now=1001.0)
    assert found is not None and found.role == "supervisor"
    assert found.key_id == key_id("sup-key-1", secret=SECRET)
    assert "sup-key-1" not in cookie


def test_each_login_is_its_own_session() -> None:
    first = session.verify(keyring=KEYRING, cookie=session.sign(keyring=KEYRING, key="sup-key-1", role="supervisor"))
    second = session.verify(keyring=KEYRING, cookie=session.sign(keyring=KEYRING, key="sup-key-1", role="supervisor"))
    assert first is not None and second is not None and first.session_id != second.session_id


def test_an_expired_cookie_is_no_session() -> None:
    cookie = session.sign(keyring=KEYRING, key="adm-key-1", role="admin", now=1000.0)
    assert session.verify(keyring=KEYRING, cookie=cookie, now=1000.0 + session.LIFETIME_S + 1) is None


def test_a_revoked_key_ends_its_sessions() -> None:
    cookie = session.sign(keyring=KEYRING, key="sup-key-1", role="supervisor", now=1000.0)
    others = Keyring(parse_key_entries("admin:adm-1:adm-key-1"), secret=SECRET)
    assert session.verify(keyring=others, cookie=cookie, now=1001.0) is None


def test_an_agent_key_never_makes_a_session() -> None:
    cookie = session.sign(keyring=KEYRING, key="agt-key-1", role="agent", now=1000.0)
    assert session.verify(keyring=KEYRING, cookie=cookie, now=1001.0) is None


def test_a_cookie_signed_with_another_key_is_refused() -> None:
    forged = session.sign(keyring=KEYRING, key="not-configured", role="admin", now=1000.0)
    payload = session.sign(keyring=KEYRING, key="sup-key-1", role="supervisor", now=1000.0).split(".")[0]
    assert session.verify(keyring=KEYRING, cookie=f"{payload}.{forged.split('.')[1]}", now=1001.0) is None


def test_garbage_is_no_session() -> None:
    for cookie in (None, "", "abc", "a.b", "!!!.???", "e30.e30"):
        assert session.verify(keyring=KEYRING, cookie=cookie, now=1001.0) is None
