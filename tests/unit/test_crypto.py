"""Field encryption of personal data at rest: round trips, rotation, blind index, the development key file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from shared.crypto import Cipher, cipher_from_settings, generate_key

NAME = "张伟"
PHONE = "+8613800138000"
NOTES = "客户担心个人信息泄露，拒绝回访"


@pytest.fixture
def cipher() -> Cipher:
    return Cipher([generate_key()])


def test_str_round_trip(cipher: Cipher) -> None:
    assert cipher.decrypt(cipher.encrypt(NOTES)) == NOTES


def test_json_round_trip(cipher: Cipher) -> None:
    value = {"name": NAME, "phone": PHONE, "email": "zhang.wei@example.com", "window": {"start": "18:00"}}
    assert cipher.decrypt_json(cipher.encrypt_json(value)) == value


@pytest.mark.parametrize("plaintext", [NAME, PHONE, NOTES])
def test_ciphertext_hides_plaintext(cipher: Cipher, plaintext: str) -> None:
    token = cipher.encrypt(plaintext)
    assert plaintext not in token
    assert plaintext.encode() not in token.encode()


def test_json_ciphertext_hides_plaintext(cipher: Cipher) -> None:
    token = cipher.encrypt_json({"name": NAME, "phone": PHONE})
    assert NAME not in token
    assert PHONE.lstrip("+") not in token
    assert "phone" not in token


def test_same_plaintext_gives_different_tokens(cipher: Cipher) -> None:
    assert cipher.encrypt(PHONE) != cipher.encrypt(PHONE)


def test_rotation_decrypts_old_tokens() -> None:
    new, old = generate_key(), generate_key()
    token = Cipher([old]).encrypt(NOTES)
    assert Cipher([new, old]).decrypt(token) == NOTES


def test_rotation_encrypts_with_the_first_key() -> None:
    new, old = generate_key(), generate_key()
    token = Cipher([new, old]).encrypt(NOTES)
    assert Cipher([new]).decrypt(token) == NOTES
    with pytest.raises(ValueError):
        Cipher([old]).decrypt(token)


def test_rotate_reencrypts_under_the_new_key() -> None:
    new, old = generate_key(), generate_key()
    token = Cipher([old]).encrypt(NOTES)
    rotated = Cipher([new, old]).rotate(token)
    assert Cipher([new]).decrypt(rotated) == NOTES
    with pytest.raises(ValueError):
        Cipher([old]).decrypt(rotated)


def test_wrong_key_raises_value_error() -> None:
    token = Cipher([generate_key()]).encrypt(NOTES)
    with pytest.raises(ValueError, match="cannot decrypt"):
        Cipher([generate_key()]).decrypt(token)


def test_garbage_token_raises_value_error(cipher: Cipher) -> None:
    with pytest.raises(ValueError):
        cipher.decrypt("not-a-token")


@pytest.mark.parametrize("key", ["short", "", "!!!!not base64 at all!!!!", "changeme"])
def test_malformed_key_has_a_helpful_message(key: str) -> None:
    with pytest.raises(ValueError) as caught:
        Cipher([key])
    message = str(caught.value)
    assert "HUIFANG_ENCRYPTION_KEY" in message
    assert "keygen" in message


def test_malformed_second_key_is_refused() -> None:
    with pytest.raises(ValueError, match="HUIFANG_ENCRYPTION_KEY"):
        Cipher([generate_key(), "short"])


def test_no_key_is_refused() -> None:
    with pytest.raises(ValueError):
        Cipher([])


INDEX_KEY = "index-key-for-tests-0123456789abcdef"


def test_phone_index_is_stable_for_equal_phones() -> None:
    key = generate_key()
    one, two = Cipher([key], index_key=INDEX_KEY), Cipher([key], index_key=INDEX_KEY)
    assert one.phone_index(PHONE) == two.phone_index(PHONE)


@pytest.mark.parametrize("written", ["+86 138 0013 8000", "+86-138-0013-8000", f" {PHONE} ", "+86 138\t0013-8000"])
def test_phone_index_is_of_the_e164_phone(written: str) -> None:
    cipher = Cipher([generate_key()], index_key=INDEX_KEY)
    assert cipher.phone_index(written) == cipher.phone_index(PHONE)


def test_phone_index_differs_for_different_phones() -> None:
    cipher = Cipher([generate_key()], index_key=INDEX_KEY)
    assert cipher.phone_index(PHONE) != cipher.phone_index("+8613800138001")


def test_phone_index_is_keyed_by_the_index_key_and_hides_the_phone() -> None:
    key = generate_key()
    index = Cipher([key], index_key=INDEX_KEY).phone_index(PHONE)
    assert PHONE.lstrip("+") not in index
    assert index != Cipher([key], index_key=INDEX_KEY + "x").phone_index(PHONE)


def test_phone_index_survives_rotating_and_retiring_encryption_keys() -> None:
    new, old = generate_key(), generate_key()
    before = Cipher([old], index_key=INDEX_KEY).phone_index(PHONE)
    assert Cipher([new, old], index_key=INDEX_KEY).phone_index(PHONE) == before
    assert Cipher([new], index_key=INDEX_KEY).phone_index(PHONE) == before


def test_no_index_key_means_no_index() -> None:
    with pytest.raises(ValueError, match="HUIFANG_INDEX_KEY"):
        Cipher([generate_key()]).phone_index(PHONE)


def test_is_current_tells_the_newest_key_from_older_ones() -> None:
    new, old = generate_key(), generate_key()
    rotated = Cipher([new, old])
    assert not rotated.is_current(Cipher([old]).encrypt(NOTES))
    assert rotated.is_current(rotated.rotate(Cipher([old]).encrypt(NOTES)))


def test_configured_keys_are_comma_separated(tmp_path: Path) -> None:
    new, old = generate_key(), generate_key()
    token = Cipher([old]).encrypt(NOTES)
    cipher = cipher_from_settings(f"{new}, {old}", tmp_path, allow_generate=False, index_key=INDEX_KEY)
    assert cipher.decrypt(token) == NOTES
    assert Cipher([new]).decrypt(cipher.encrypt(NAME)) == NAME
    assert cipher.phone_index(PHONE) == Cipher([old], index_key=INDEX_KEY).phone_index(PHONE)
    assert list(tmp_path.iterdir()) == []


def test_missing_index_key_without_generation_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HUIFANG_INDEX_KEY"):
        cipher_from_settings(generate_key(), tmp_path, allow_generate=False)


def test_development_key_file_is_created_private(tmp_path: Path) -> None:
    data_dir = tmp_path / ".local"
    cipher = cipher_from_settings(None, data_dir, allow_generate=True)
    key_file, index_file = data_dir / "encryption.key", data_dir / "index.key"
    for made in (key_file, index_file):
        assert made.is_file()
        assert stat.S_IMODE(made.stat().st_mode) == 0o600
    assert Cipher([key_file.read_text().strip()]).decrypt(cipher.encrypt(NAME)) == NAME
    assert index_file.read_text() not in key_file.read_text()


def test_development_key_file_is_reused(tmp_path: Path) -> None:
    token = cipher_from_settings(None, tmp_path, allow_generate=True).encrypt(NOTES)
    first = cipher_from_settings(None, tmp_path, allow_generate=True).phone_index(PHONE)
    again = cipher_from_settings(None, tmp_path, allow_generate=True)
    assert again.decrypt(token) == NOTES and again.phone_index(PHONE) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encryption.key", "index.key"]


def test_missing_key_without_generation_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HUIFANG_ENCRYPTION_KEY"):
        cipher_from_settings(None, tmp_path, allow_generate=False, index_key=INDEX_KEY)
    assert not (tmp_path / "encryption.key").exists()


def test_empty_key_without_generation_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        cipher_from_settings("", tmp_path, allow_generate=False, index_key=INDEX_KEY)
