"""The party's page links: signed tokens that name one callback and expire at its deadline; the caller code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared import links

SECRET = b"link-secret-for-tests-0123456789abcdef"
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
DEADLINE = NOW + timedelta(days=5)


def token(callback_id: str = "cb-1", expires_at: datetime = DEADLINE) -> str:
    return links.sign(secret=SECRET, callback_id=callback_id, expires_at=expires_at)


def test_a_signed_token_names_its_callback_until_the_deadline() -> None:
    assert links.verify(secret=SECRET, token=token(), now=NOW) == "cb-1"
    assert links.verify(secret=SECRET, token=token(), now=DEADLINE - timedelta(seconds=1)) == "cb-1"


def test_an_expired_token_names_nothing() -> None:
    assert links.verify(secret=SECRET, token=token(), now=DEADLINE) is None


@pytest.mark.parametrize("part", [0, 1, 2])
def test_a_tampered_token_names_nothing(part: int) -> None:
    pieces = token().split(".")
    pieces[part] = {
        0: "cb-2",
        1: str(int(pieces[1]) + 86_400),
        2: pieces[2][:-1] + ("A" if pieces[2][-1] != "A" else "B"),
    }[part]
    assert links.verify(secret=SECRET, token=".".join(pieces), now=NOW) is None


def test_another_callbacks_signature_does_not_open_this_one() -> None:
    other = token("cb-2").split(".")[2]
    mine = token("cb-1").split(".")
    assert links.verify(secret=SECRET, token=f"{mine[0]}.{mine[1]}.{other}", now=NOW) is None


def test_another_secret_names_nothing() -> None:
    assert links.verify(secret=b"another-secret", token=token(), now=NOW) is None


@pytest.mark.parametrize("junk", ["", "cb-1", "cb-1.123", "a.b.c", "../../etc.1.x", "x" * 500])
def test_malformed_tokens_name_nothing(junk: str) -> None:
    assert links.verify(secret=SECRET, token=junk, now=NOW) is None


def test_the_form_field_is_bound_to_the_token() -> None:
    assert links.form_field(secret=SECRET, token=token("cb-1")) == links.form_field(secret=SECRET, token=token("cb-1"))
    assert links.form_field(secret=SECRET, token=token("cb-1")) != links.form_field(secret=SECRET, token=token("cb-2"))


def test_caller_codes_are_six_digits_and_vary() -> None:
    codes = {links.caller_code() for _ in range(200)}
    assert all(len(c) == 6 and c.isdigit() for c in codes)
    assert len(codes) > 150  # random, not a counter or a constant


def test_development_makes_one_link_secret_and_keeps_it(tmp_path: Path) -> None:
    first = links.link_secret(None, tmp_path, allow_generate=True)
    assert len(first) >= 32
    assert links.link_secret(None, tmp_path, allow_generate=True) == first
    assert links.link_secret("configured", tmp_path, allow_generate=False) == b"configured"
    with pytest.raises(ValueError, match="HUIFANG_LINK_SECRET"):
        links.link_secret(None, tmp_path / "prod", allow_generate=False)
