"""Configuration from the environment (CONTRACT.md section 5): defaults, API keys, the production guard."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from shared.settings import DEFAULT_POLICY, ApiKey, SettingsError, load_settings, parse_api_keys, parse_key_entries

REAL_KEY = Fernet.generate_key().decode()
OURS = ("HUIFANG_", "KAFKA_", "DATABASE_URL")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable of ours from the outer environment and no `.env` of the repository."""
    for name in list(os.environ):
        if name.upper().startswith(OURS):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def production(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    monkeypatch.setenv("HUIFANG_ENV", "production")
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.kafka_bootstrap_servers == "localhost:9092"
    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert settings.database_url is None
    assert settings.huifang_env == "development"
    assert settings.huifang_policy_file == DEFAULT_POLICY
    assert DEFAULT_POLICY.is_file()
    assert parse_api_keys(settings.huifang_api_keys.get_secret_value()) == {}
    assert settings.huifang_encryption_key is None
    assert settings.huifang_topic_prefix == ""


@pytest.mark.parametrize(("service", "port"), [("scheduler", 8001), ("outcomes", 8002), ("notifier", 8003)])
def test_default_ports(service: str, port: int) -> None:
    assert load_settings().port_of(service) == port


def test_port_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUIFANG_OUTCOMES_PORT", "9102")
    assert load_settings().port_of("outcomes") == 9102


def test_env_file_in_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("KAFKA_BOOTSTRAP_SERVERS=broker-1:9093\n")
    assert load_settings().kafka_bootstrap_servers == "broker-1:9093"


def test_api_keys_parse_to_key_role() -> None:
    assert parse_api_keys("agent:a1,supervisor:s1") == {"a1": "agent", "s1": "supervisor"}


def test_api_keys_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUIFANG_API_KEYS", "agent:a1,supervisor:s1,admin:z9")
    settings = load_settings()
    assert parse_api_keys(settings.huifang_api_keys.get_secret_value()) == {
        "a1": "agent",
        "s1": "supervisor",
        "z9": "admin",
    }


def test_api_keys_tolerate_spaces() -> None:
    assert parse_api_keys(" agent:a1 , supervisor:s1 ") == {"a1": "agent", "s1": "supervisor"}


def test_api_keys_are_not_shown_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUIFANG_API_KEYS", "agent:very-secret-key")
    assert "very-secret-key" not in repr(load_settings())


@pytest.mark.parametrize("raw", ["boss:x", "agentonly", "agent:", "agent:a1,boss:x"])
def test_bad_api_keys_entry_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("HUIFANG_API_KEYS", raw)
    with pytest.raises(SettingsError, match="HUIFANG_API_KEYS"):
        load_settings()


@pytest.mark.parametrize("raw", ["boss:x", "agentonly"])
def test_parse_api_keys_raises_value_error(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_api_keys(raw)


def test_production_without_secrets_names_both(monkeypatch: pytest.MonkeyPatch) -> None:
    production(monkeypatch)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "HUIFANG_ENCRYPTION_KEY" in str(caught.value)
    assert "HUIFANG_API_KEYS" in str(caught.value)


def test_production_without_encryption_key(monkeypatch: pytest.MonkeyPatch) -> None:
    production(monkeypatch, HUIFANG_API_KEYS="admin:k-7f3a9c")
    with pytest.raises(SettingsError, match="HUIFANG_ENCRYPTION_KEY"):
        load_settings()


def test_production_without_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    production(monkeypatch, HUIFANG_ENCRYPTION_KEY=REAL_KEY)
    with pytest.raises(SettingsError, match="HUIFANG_API_KEYS"):
        load_settings()


@pytest.mark.parametrize("placeholder", ["changeme", "CHANGEME", "secret"])
def test_production_refuses_placeholder_encryption_key(monkeypatch: pytest.MonkeyPatch, placeholder: str) -> None:
    production(monkeypatch, HUIFANG_ENCRYPTION_KEY=placeholder, HUIFANG_API_KEYS="admin:k-7f3a9c")
    with pytest.raises(SettingsError, match="HUIFANG_ENCRYPTION_KEY"):
        load_settings()


def test_production_refuses_placeholder_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    production(monkeypatch, HUIFANG_ENCRYPTION_KEY=REAL_KEY, HUIFANG_API_KEYS="admin:changeme")
    with pytest.raises(SettingsError, match="HUIFANG_API_KEYS"):
        load_settings()


def test_production_refuses_webhook_without_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    production(
        monkeypatch,
        HUIFANG_ENCRYPTION_KEY=REAL_KEY,
        HUIFANG_API_KEYS="admin:k-7f3a9c",
        HUIFANG_NOTIFY_WEBHOOK_URL="https://hooks.bank.example/huifang",
    )
    with pytest.raises(SettingsError, match="HUIFANG_WEBHOOK_SECRET"):
        load_settings()


def test_production_refuses_placeholder_webhook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    production(
        monkeypatch,
        HUIFANG_ENCRYPTION_KEY=REAL_KEY,
        HUIFANG_API_KEYS="admin:k-7f3a9c",
        HUIFANG_NOTIFY_WEBHOOK_URL="https://hooks.bank.example/huifang",
        HUIFANG_WEBHOOK_SECRET="changeme",
    )
    with pytest.raises(SettingsError, match="HUIFANG_WEBHOOK_SECRET"):
        load_settings()


def test_production_refuses_placeholder_kafka_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """CONTRACT.md 5: production refuses to start 'with a placeholder secret' — the SASL password is one."""
    production(
        monkeypatch,
        HUIFANG_ENCRYPTION_KEY=REAL_KEY,
        HUIFANG_API_KEYS="admin:k-7f3a9c",
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME="huifang",
        KAFKA_SASL_PASSWORD="changeme",
    )
    with pytest.raises(SettingsError, match="KAFKA_SASL_PASSWORD"):
        load_settings()


def test_production_with_real_values_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_production_guard import SAFE

    production(monkeypatch, **SAFE)
    assert load_settings().huifang_env == "production"


def test_api_keys_with_principals() -> None:
    entries = parse_key_entries("agent:agent-7:a1,supervisor:s1")
    assert entries == [ApiKey("agent", "agent-7", "a1"), ApiKey("supervisor", None, "s1")]
    assert "a1" not in repr(entries)


@pytest.mark.parametrize("raw", ["agent:a1,admin:a1", "agent:x:a1,admin:y:a1", "agent:bad principal:k"])
def test_a_key_listed_twice_or_a_bad_principal_is_refused(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("HUIFANG_API_KEYS", raw)
    with pytest.raises(SettingsError, match="HUIFANG_API_KEYS"):
        load_settings()


def test_development_needs_no_secrets() -> None:
    assert load_settings().huifang_env == "development"


def test_unknown_env_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUIFANG_ENV", "staging")
    with pytest.raises(SettingsError, match="HUIFANG_ENV"):
        load_settings()


def test_missing_policy_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HUIFANG_POLICY_FILE", str(tmp_path / "absent.toml"))
    with pytest.raises(SettingsError, match="HUIFANG_POLICY_FILE"):
        load_settings()


def test_existing_policy_file_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text("[attempts]\nmax_calls = 4\n")
    monkeypatch.setenv("HUIFANG_POLICY_FILE", str(path))
    assert load_settings().huifang_policy_file == path


@pytest.mark.parametrize("url", ["mysql://huifang@db/huifang", "postgresql://huifang@db/huifang", "sqlite:///x.db"])
def test_unsupported_database_scheme_is_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        load_settings()


@pytest.mark.parametrize(
    "url", ["postgresql+asyncpg://huifang:pw@db:5432/huifang", "sqlite+aiosqlite:///var/lib/huifang.db"]
)
def test_supported_database_scheme_is_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    assert load_settings().database_url == url


def test_topic_and_group_without_prefix() -> None:
    settings = load_settings()
    assert settings.topic("loan.stage.v1") == "loan.stage.v1"
    assert settings.group_id("scheduler") == "huifang-scheduler"


def test_topic_and_group_apply_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUIFANG_TOPIC_PREFIX", "tenant-a.")
    settings = load_settings()
    assert settings.topic("loan.stage.v1") == "tenant-a.loan.stage.v1"
    assert settings.topic("callback.refused.v1.dlq") == "tenant-a.callback.refused.v1.dlq"
    assert settings.group_id("notifier") == "tenant-a.huifang-notifier"


def test_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "from-env:9092")
    assert load_settings(kafka_bootstrap_servers="override:9092").kafka_bootstrap_servers == "override:9092"
