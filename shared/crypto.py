"""Field encryption of personal data at rest (Fernet, AES-128-CBC + HMAC), with key rotation."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class Cipher:
    """Encrypts with the first key, decrypts with any: list the new key first to rotate."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("at least one encryption key is required")
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])
        except ValueError:
            raise ValueError(
                "HUIFANG_ENCRYPTION_KEY must be comma-separated url-safe base64 32-byte keys "
                "(make one with `huifang keygen`)"
            ) from None
        # A keyed hash lets us match equal values (e.g. one phone on two loans) without decrypting.
        self._index_key = hashlib.sha256(b"huifang-index:" + keys[-1].encode()).digest()

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

    def blind_index(self, value: str) -> str:
        return hmac.new(self._index_key, value.strip().encode(), hashlib.sha256).hexdigest()

    def rotate(self, token: str) -> str:
        return self._fernet.rotate(token.encode()).decode()


def generate_key() -> str:
    return Fernet.generate_key().decode()


def cipher_from_settings(configured: str | None, data_dir: Path, *, allow_generate: bool) -> Cipher:
    """The configured keys, or in development a key kept under the data directory."""
    if configured:
        return Cipher([k.strip() for k in configured.split(",") if k.strip()])
    if not allow_generate:
        raise ValueError("HUIFANG_ENCRYPTION_KEY is required outside development")
    return Cipher([kept_secret(data_dir / "encryption.key", make=generate_key)])


def kept_secret(path: Path, *, make: Callable[[], str]) -> str:
    """A development secret kept in `path`, made once by `make` when the file does not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        # Write to a temp file and link it: services starting together all read one complete secret.
        tmp.write_text(make())
        tmp.chmod(0o600)
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()
