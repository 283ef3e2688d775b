"""Configuration from the environment (CONTRACT.md section 5), validated at start."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POLICY = ROOT / "policy.toml"
PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "placeholder", "dev", "development"}
ROLES = ("agent", "supervisor", "admin")


class Settings(BaseSettings):
    """Settings shared by every service; names are the environment variables of the contract."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False, env_ignore_empty=True)

    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None

    database_url: str | None = None
    huifang_api_keys: SecretStr = SecretStr("")
    huifang_policy_file: Path = DEFAULT_POLICY
    huifang_env: Literal["development", "test", "production"] = "development"
    huifang_encryption_key: SecretStr | None = None
    huifang_notify_webhook_url: str | None = None
    huifang_webhook_secret: SecretStr | None = None
    huifang_smtp_host: str | None = None
    huifang_smtp_port: int = Field(default=25, ge=1, le=65535)
    huifang_smtp_from: str = "huifang@localhost"
    huifang_sms_webhook_url: str | None = None
    huifang_scheduler_port: int = Field(default=8001, ge=1, le=65535)
    huifang_outcomes_port: int = Field(default=8002, ge=1, le=65535)
    huifang_notifier_port: int = Field(default=8003, ge=1, le=65535)
    huifang_topic_prefix: str = ""
    huifang_db_schema_prefix: str = ""

    # Operational knobs beyond the contract's table; defaults suit a single node.
    huifang_data_dir: Path = ROOT / ".local"
    huifang_topic_partitions: int = Field(default=6, ge=1)
    huifang_topic_replication: int = Field(default=1, ge=1)
    huifang_timer_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    huifang_consumer_batch: int = Field(default=200, ge=1, le=10_000)
    huifang_webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    # Notifier: tries per notification (webhook, email, SMS) and the first pause between them.
    huifang_notify_max_attempts: int = Field(default=20, ge=1, le=50)
    huifang_notify_retry_base_seconds: float = Field(default=2.0, gt=0, le=3600)
    huifang_host: str = "127.0.0.1"
    huifang_drain_seconds: float = Field(default=10.0, ge=0, le=300)
    # Static consumer-group membership: a restarted replica takes its partitions back at once.
    huifang_instance_id: str | None = Field(default=None, min_length=1, max_length=200)
    huifang_session_timeout_ms: int = Field(default=10_000, ge=6_000, le=300_000)

    @field_validator("huifang_api_keys")
    @classmethod
    def _keys_parse(cls, value: SecretStr) -> SecretStr:
        parse_api_keys(value.get_secret_value())
        return value

    @field_validator("huifang_policy_file")
    @classmethod
    def _policy_exists(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"policy file {value} does not exist")
        return value

    @field_validator("database_url")
    @classmethod
    def _db_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @model_validator(mode="after")
    def _production_guard(self) -> Settings:
        if self.huifang_env != "production":
            return self
        missing = []
        if self.huifang_encryption_key is None or _placeholder(self.huifang_encryption_key):
            missing.append("HUIFANG_ENCRYPTION_KEY")
        if not parse_api_keys(self.huifang_api_keys.get_secret_value()):
            missing.append("HUIFANG_API_KEYS")
        if any(_placeholder(SecretStr(k)) for k in parse_api_keys(self.huifang_api_keys.get_secret_value())):
            missing.append("HUIFANG_API_KEYS (placeholder key)")
        if self.huifang_notify_webhook_url and (
            self.huifang_webhook_secret is None or _placeholder(self.huifang_webhook_secret)
        ):
            missing.append("HUIFANG_WEBHOOK_SECRET")
        if self.kafka_security_protocol.startswith("SASL") and (
            self.kafka_sasl_password is None or _placeholder(self.kafka_sasl_password)
        ):
            missing.append("KAFKA_SASL_PASSWORD")
        if missing:
            raise ValueError("production requires real values for: " + ", ".join(missing))
        return self

    def port_of(self, service: str) -> int:
        return int(getattr(self, f"huifang_{service}_port"))

    def topic(self, name: str) -> str:
        return f"{self.huifang_topic_prefix}{name}"

    def group_id(self, service: str) -> str:
        return f"{self.huifang_topic_prefix}huifang-{service}"

    def instance_id(self, service: str) -> str | None:
        """This replica's stable group member name: the setting, or service, host and HTTP port."""
        if self.huifang_instance_id:
            return f"{service}-{self.huifang_instance_id}"
        port = getattr(self, f"huifang_{service}_port", None)
        # Two live replicas on one host cannot share a port, so the default never collides; a consumer
        # that is no service of ours (a tool, a test) has no port and joins as a dynamic member.
        return f"{service}-{socket.gethostname()}-{port}" if port else None


def _placeholder(secret: SecretStr) -> bool:
    return secret.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS


def parse_api_keys(raw: str) -> dict[str, str]:
    """Parse `role:key,role:key` into {key: role}; raises ValueError naming the bad entry."""
    keys: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        role, sep, key = entry.partition(":")
        if not sep or not key:
            raise ValueError("each entry must be role:key")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        keys[key] = role
    return keys


def load_settings(**overrides: object) -> Settings:
    """Read settings; raises SettingsError naming the variable that is wrong."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


class SettingsError(RuntimeError):
    """A setting is missing or invalid; the message names it."""


def _describe(exc: object) -> str:
    from pydantic import ValidationError

    assert isinstance(exc, ValidationError)
    lines = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]).upper() or "settings"
        lines.append(f"{name}: {err['msg']}")
    return "invalid configuration: " + "; ".join(lines)
