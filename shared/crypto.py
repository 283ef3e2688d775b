"""Field encryption of personal data at rest (Fernet, AES-128-CBC + HMAC), with key rotation."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from shared.events import canonical_phone


class Cipher:
    """Encrypts with the first key, decrypts with any: list the new key first to rotate."""

    def __init__(self, keys: list[str], *, index_key: str | None = None) -> None:
        if not keys:
            raise ValueError("at least one encryption key is required")
        try:
            fernets = [Fernet(k.encode()) for k in keys]
        except ValueError:
            raise ValueError(
                "HUIFANG_ENCRYPTION_KEY must be comma-separated url-safe base64 32-byte keys "
                "(make one with `huifang keygen`)"
            ) from None
        self._fernet = MultiFernet(fernets)
        self._newest = fernets[0]
        # The blind index has a key of its own: rotating the encryption keys changes no index.
        self._index_key = hashlib.sha256(b"huifang-index:" + index_key.encode()).digest() if index_key else None

    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ValueError("cannot decrypt: no configured key matches") from None

    def encrypt_json(self, value: dict[str, Any]) -> str:
        return self.encrypt(json.dumps(value, ensure_ascii=False, separators=(",", ":")))

    def decrypt_json(self, token: str) -> dict[str, Any]:
        result = json.loads(self.decrypt(token))
        assert isinstance(result, dict)
        return result

    def phone_index(self, phone: str) -> str:
        """A keyed hash of the phone in E.164, to find one person across loans without decrypting."""
        if self._index_key is None:
            raise ValueError("no index key: set HUIFANG_INDEX_KEY")
        return hmac.new(self._index_key, canonical_phone(phone).encode(), hashlib.sha256).hexdigest()

    def rotate(self, token: str) -> str:
        """The same value under the newest key; raises ValueError when no configured key reads it."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise ValueError("cannot decrypt: no configured key matches") from None

    def is_current(self, token: str) -> bool:
        """Whether the token is encrypted with the newest key (rekey leaves such a value alone)."""
        try:
            self._newest.decrypt(token.encode())
        except InvalidToken:
            return False
        return True


def generate_key() -> str:
    return Fernet.generate_key().decode()


def cipher_from_settings(
    configured: str | None, data_dir: Path, *, allow_generate: bool, index_key: str | None = None
) -> Cipher:
    """The configured keys, or in development keys kept under the data directory."""
    if not index_key:
        if not allow_generate:
            raise ValueError("HUIFANG_INDEX_KEY is required outside development")
        index_key = kept_secret(data_dir / "index.key", make=lambda: secrets.token_urlsafe(32))
    if configured:
        return Cipher([k.strip() for k in configured.split(",") if k.strip()], index_key=index_key)
    if not allow_generate:
        raise ValueError("HUIFANG_ENCRYPTION_KEY is required outside development")
    return Cipher([kept_secret(data_dir / "encryption.key", make=generate_key)], index_key=index_key)


def kept_secret(path: Path, *, make: Callable[[], str]) -> str:
    """A development secret kept in `path`, made once by `make` when the file does not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}"
    try:
        # Write to a temp file and link it: services starting together all read one complete key.
        tmp.unlink(missing_ok=True)  # left by a crashed process of the same pid
        # Created new (O_EXCL, never through a planted link) and private from its first byte.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(make())
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()
