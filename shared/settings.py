"""Configuration from the environment (CONTRACT.md section 5), validated at start."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared import faults

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POLICY = ROOT / "policy.toml"
PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "placeholder", "dev", "development"}
# Values shipped in this repository (Makefile, README, docker-compose, tests): never secrets in production.
SHIPPED_SECRETS = frozenset(
    {
        "dev-agent",
        "dev-supervisor",
        "dev-admin",
        "dev-webhook-secret",
        "agent-key-1",
        "supervisor-key-1",
        "admin-key-1",
        "whsec-test-1",
    }
)
ROLES = ("agent", "supervisor", "admin")
MIN_SECRET_LENGTH = 32
PRINCIPAL_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


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
    huifang_index_key: SecretStr | None = None
    huifang_link_secret: SecretStr | None = None
    huifang_public_url: str = "http://127.0.0.1:8002"
    huifang_notify_webhook_url: str | None = None
    huifang_webhook_secret: SecretStr | None = None
    huifang_smtp_host: str | None = None
    huifang_smtp_port: int = Field(default=25, ge=1, le=65535)
    huifang_smtp_from: str = "huifang@localhost"
    huifang_smtp_username: str | None = None
    huifang_smtp_password: SecretStr | None = None
    # starttls and tls refuse to send when the server cannot encrypt: no silent downgrade.
    huifang_smtp_tls: Literal["starttls", "tls", "none"] = "starttls"
    huifang_forwarded_allow_ips: str = "127.0.0.1"
    huifang_sms_webhook_url: str | None = None
    huifang_scheduler_port: int = Field(default=8001, ge=1, le=65535)
    huifang_outcomes_port: int = Field(default=8002, ge=1, le=65535)
    huifang_notifier_port: int = Field(default=8003, ge=1, le=65535)
    huifang_topic_prefix: str = ""
    huifang_db_schema_prefix: str = ""

    # Operational knobs beyond the contract's table; defaults suit a single node.
    huifang_data_dir: Path = ROOT / ".local"
    # Logs: `auto` is console lines when stderr is a terminal, JSON otherwise.
    huifang_log_format: Literal["auto", "json", "console"] = "auto"
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
    # CONTRACT.md 3: this many failed authentications from one address in a minute lock it out for a minute.
    huifang_auth_failures_per_minute: int = Field(default=10, ge=1, le=10_000)
    # Static consumer-group membership: a restarted replica takes its partitions back at once.
    huifang_instance_id: str | None = Field(default=None, min_length=1, max_length=200)
    huifang_session_timeout_ms: int = Field(default=10_000, ge=6_000, le=300_000)
    # The longest a consumer batch may take before the broker gives its partitions to another member.
    huifang_max_poll_interval_ms: int = Field(default=300_000, ge=1_000, le=3_600_000)
    # Test only (shared/faults.py): crash points that kill the process; production refuses any.
    huifang_fault_points: str | None = None
    # `make run` for `huifang demo`: the dashboard says its data and any experiment effect are simulated.
    huifang_demo: bool = False

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

    @field_validator("huifang_fault_points")
    @classmethod
    def _fault_points_parse(cls, value: str | None) -> str | None:
        faults.parse(value or "")
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
        problems = production_problems(self)
        if problems:
            raise ValueError("production refuses to start: " + "; ".join(problems))
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


def _weak(value: str) -> str | None:
    """Why a secret is unfit for production, or None; never says the value."""
    if value.strip().lower() in PLACEHOLDER_SECRETS or value in SHIPPED_SECRETS:
        return "is a development or placeholder value shipped in the repository"
    if len(value) < MIN_SECRET_LENGTH:
        return f"is shorter than {MIN_SECRET_LENGTH} characters"
    return None


def _secret_problem(name: str, secret: SecretStr | None) -> str | None:
    """A required secret of at least MIN_SECRET_LENGTH characters, not one shipped in the repository."""
    if secret is None:
        return f"{name} is required"
    # A key list (HUIFANG_ENCRYPTION_KEY rotates by comma-joining) is judged entry by entry.
    for entry in secret.get_secret_value().split(","):
        why = _weak(entry.strip())
        if why:
            return f"{name} {why}"
    return None


def _api_key_problems(raw: str) -> list[str]:
    entries = parse_key_entries(raw)
    if not entries:
        return ["HUIFANG_API_KEYS is required"]
    problems = []
    for n, entry in enumerate(entries, start=1):
        why = _weak(entry.key)
        if why:
            problems.append(f"HUIFANG_API_KEYS entry {n} ({entry.role}) {why}")
        if entry.principal is None:
            problems.append(f"HUIFANG_API_KEYS entry {n} ({entry.role}) has no principal; use role:principal:key")
    return problems


def production_problems(settings: Settings) -> list[str]:
    """Every reason `settings` is unsafe for production, each naming its variable (CONTRACT.md section 5)."""
    problems = _api_key_problems(settings.huifang_api_keys.get_secret_value())
    for name, secret in (
        ("HUIFANG_ENCRYPTION_KEY", settings.huifang_encryption_key),
        ("HUIFANG_LINK_SECRET", settings.huifang_link_secret),
        ("HUIFANG_INDEX_KEY", settings.huifang_index_key),
    ):
        problems += filter(None, [_secret_problem(name, secret)])
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        problems.append("KAFKA_SECURITY_PROTOCOL must be SSL or SASL_SSL")
    if settings.kafka_security_protocol.startswith("SASL"):
        if not settings.kafka_sasl_mechanism:
            problems.append("KAFKA_SASL_MECHANISM is required with SASL")
        if not settings.kafka_sasl_username:
            problems.append("KAFKA_SASL_USERNAME is required with SASL")
        password = settings.kafka_sasl_password
        if password is None or _placeholder(password) or password.get_secret_value() in SHIPPED_SECRETS:
            problems.append("KAFKA_SASL_PASSWORD is required and must not be a placeholder")
    outbound = {
        "HUIFANG_NOTIFY_WEBHOOK_URL": settings.huifang_notify_webhook_url,
        "HUIFANG_SMS_WEBHOOK_URL": settings.huifang_sms_webhook_url,
    }
    for name, url in outbound.items():
        if url and not url.startswith("https://"):
            problems.append(f"{name} must be an https:// URL")
    if any(outbound.values()):
        problems += filter(None, [_secret_problem("HUIFANG_WEBHOOK_SECRET", settings.huifang_webhook_secret)])
    if not settings.huifang_public_url.startswith("https://"):
        problems.append("HUIFANG_PUBLIC_URL must be an https:// URL")
    if settings.huifang_smtp_tls == "none":
        problems.append("HUIFANG_SMTP_TLS must be starttls or tls")
    if settings.huifang_fault_points:
        problems.append("HUIFANG_FAULT_POINTS is a test setting that kills the process; unset it")
    if settings.huifang_demo:
        problems.append("HUIFANG_DEMO must be off: a bank's dashboard would call its data simulated")
    password = settings.huifang_smtp_password
    if password is not None and (_placeholder(password) or password.get_secret_value() in SHIPPED_SECRETS):
        problems.append("HUIFANG_SMTP_PASSWORD must not be a placeholder")
    return problems


@dataclass(frozen=True)
class ApiKey:
    """One entry of HUIFANG_API_KEYS: a role, who acts (None in the older `role:key` form), the key."""

    role: str
    principal: str | None
    key: str = field(repr=False)


def parse_key_entries(raw: str) -> list[ApiKey]:
    """Parse `role:principal:key` (or the older `role:key`) entries; raises ValueError naming the bad entry."""
    entries: list[ApiKey] = []
    seen: set[str] = set()
    for n, entry in enumerate(filter(None, (part.strip() for part in raw.split(","))), start=1):
        parts = entry.split(":", 2)
        if len(parts) < 2 or not parts[-1]:
            raise ValueError(f"entry {n} must be role:principal:key (or role:key)")
        role, key = parts[0], parts[-1]
        principal = parts[1] if len(parts) == 3 else None
        if role not in ROLES:
            raise ValueError(f"entry {n}: unknown role {role!r}; roles are {', '.join(ROLES)}")
        if principal is not None and not PRINCIPAL_PATTERN.match(principal):
            raise ValueError(f"entry {n}: a principal is 1-64 characters of A-Z a-z 0-9 . _ -")
        if key in seen:
            # The same key under two entries would silently take the last role.
            raise ValueError(f"entry {n}: this key is listed twice")
        seen.add(key)
        entries.append(ApiKey(role=role, principal=principal, key=key))
    return entries


def parse_api_keys(raw: str) -> dict[str, str]:
    """Parse HUIFANG_API_KEYS into {key: role}; raises ValueError naming the bad entry."""
    return {entry.key: entry.role for entry in parse_key_entries(raw)}


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
        name = ".".join(str(p) for p in err["loc"]).upper()
        message = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{name}: {message}" if name else message)
    return "invalid configuration: " + "; ".join(lines)
