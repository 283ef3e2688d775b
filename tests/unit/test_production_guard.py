"""The production guard (CONTRACT.md section 5): unsafe settings stop the service at start, naming the setting."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from shared.settings import SettingsError, load_settings
from tests.unit.test_settings import OURS, clean_env  # noqa: F401 (autouse: no variable of ours leaks in)

ROOT = Path(__file__).resolve().parents[2]


def token() -> str:
    return secrets.token_urlsafe(32)


SAFE = {
    "HUIFANG_ENV": "production",
    "HUIFANG_API_KEYS": f"agent:agent-7:{token()},supervisor:sup-2:{token()},admin:ops-1:{token()}",
    "HUIFANG_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    "HUIFANG_LINK_SECRET": token(),
    "HUIFANG_INDEX_KEY": token(),
    "HUIFANG_PUBLIC_URL": "https://huifang.bank.example",
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "huifang",
    "KAFKA_SASL_PASSWORD": token(),
    "HUIFANG_NOTIFY_WEBHOOK_URL": "https://hooks.bank.example/huifang",
    "HUIFANG_SMS_WEBHOOK_URL": "https://sms.bank.example/send",
    "HUIFANG_WEBHOOK_SECRET": token(),
    "HUIFANG_SMTP_HOST": "smtp.bank.example",
    "HUIFANG_SMTP_TLS": "starttls",
}


def apply(monkeypatch: pytest.MonkeyPatch, env: dict[str, str | None]) -> None:
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def refusal(monkeypatch: pytest.MonkeyPatch, **changes: str | None) -> str:
    apply(monkeypatch, {**SAFE, **changes})
    with pytest.raises(SettingsError) as caught:
        load_settings()
    return str(caught.value)


def test_safe_production_settings_start(monkeypatch: pytest.MonkeyPatch) -> None:
    apply(monkeypatch, dict(SAFE))
    assert load_settings().huifang_env == "production"


LONG = "k" * 40
CASES = {
    "short API key": ({"HUIFANG_API_KEYS": "admin:ops-1:k-7f3a9c"}, "HUIFANG_API_KEYS"),
    "one-character API key": ({"HUIFANG_API_KEYS": "admin:ops-1:x"}, "HUIFANG_API_KEYS"),
    "shipped API key": ({"HUIFANG_API_KEYS": "agent:a-1:dev-agent"}, "HUIFANG_API_KEYS"),
    "key listed twice": ({"HUIFANG_API_KEYS": f"agent:a-1:{LONG},admin:ops-1:{LONG}"}, "HUIFANG_API_KEYS"),
    "key without principal": ({"HUIFANG_API_KEYS": f"admin:{LONG}"}, "HUIFANG_API_KEYS"),
    "no API keys": ({"HUIFANG_API_KEYS": None}, "HUIFANG_API_KEYS"),
    "no encryption key": ({"HUIFANG_ENCRYPTION_KEY": None}, "HUIFANG_ENCRYPTION_KEY"),
    "placeholder encryption key": ({"HUIFANG_ENCRYPTION_KEY": "changeme"}, "HUIFANG_ENCRYPTION_KEY"),
    "no link secret": ({"HUIFANG_LINK_SECRET": None}, "HUIFANG_LINK_SECRET"),
    "short link secret": ({"HUIFANG_LINK_SECRET": "s3cr3t"}, "HUIFANG_LINK_SECRET"),
    "no index key": ({"HUIFANG_INDEX_KEY": None}, "HUIFANG_INDEX_KEY"),
    "plaintext Kafka": ({"KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}, "KAFKA_SECURITY_PROTOCOL"),
    "SASL without TLS": ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "KAFKA_SECURITY_PROTOCOL"),
    "placeholder SASL password": ({"KAFKA_SASL_PASSWORD": "changeme"}, "KAFKA_SASL_PASSWORD"),
    "http webhook": ({"HUIFANG_NOTIFY_WEBHOOK_URL": "http://hooks.bank.example/h"}, "HUIFANG_NOTIFY_WEBHOOK_URL"),
    "http SMS gateway": ({"HUIFANG_SMS_WEBHOOK_URL": "http://sms.bank.example/send"}, "HUIFANG_SMS_WEBHOOK_URL"),
    "SMS without secret": (
        {"HUIFANG_NOTIFY_WEBHOOK_URL": None, "HUIFANG_WEBHOOK_SECRET": None},
        "HUIFANG_WEBHOOK_SECRET",
    ),
    "short webhook secret": ({"HUIFANG_WEBHOOK_SECRET": "whsec-9d8e7f6a5b4c"}, "HUIFANG_WEBHOOK_SECRET"),
    "shipped webhook secret": ({"HUIFANG_WEBHOOK_SECRET": "dev-webhook-secret"}, "HUIFANG_WEBHOOK_SECRET"),
    "no public URL": ({"HUIFANG_PUBLIC_URL": None}, "HUIFANG_PUBLIC_URL"),
    "http public URL": ({"HUIFANG_PUBLIC_URL": "http://huifang.bank.example"}, "HUIFANG_PUBLIC_URL"),
    "SMTP without TLS": ({"HUIFANG_SMTP_TLS": "none"}, "HUIFANG_SMTP_TLS"),
    "crash points armed": ({"HUIFANG_FAULT_POINTS": "outbox.published"}, "HUIFANG_FAULT_POINTS"),
    "demo dashboard": ({"HUIFANG_DEMO": "true"}, "HUIFANG_DEMO"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_unsafe_setting_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    changes, name = CASES[case]
    assert name in refusal(monkeypatch, **changes)


def test_the_refusal_never_shows_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    short = "agent:a-1:tiny-key-7"
    message = refusal(monkeypatch, HUIFANG_API_KEYS=short, HUIFANG_LINK_SECRET="link-xyz")
    assert "tiny-key-7" not in message and "link-xyz" not in message


def makefile_development_settings() -> dict[str, str]:
    """The defaults of the Makefile's DEV_ENV (`NAME=$${NAME:-value}`) and of its demo target."""
    text = (ROOT / "Makefile").read_text()
    found = dict(re.findall(r"(HUIFANG_[A-Z_]+)=\$\$\{\1:-([^}]*)\}", text))
    assert {"HUIFANG_API_KEYS", "HUIFANG_WEBHOOK_SECRET"} <= set(found), found
    return found


def test_the_makefile_development_settings_are_refused_in_production(tmp_path: Path) -> None:
    """`huifang run` with the repo's development values and HUIFANG_ENV=production: exit 2, naming them."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(OURS)}
    env.update(SAFE)
    env.update(makefile_development_settings())
    env["HUIFANG_POLICY_FILE"] = str(ROOT / env["HUIFANG_POLICY_FILE"])  # make runs in the repository's root
    env["HUIFANG_ENV"] = "production"
    run = subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", "run"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    named = ("HUIFANG_API_KEYS", "HUIFANG_WEBHOOK_SECRET", "HUIFANG_NOTIFY_WEBHOOK_URL", "HUIFANG_SMS_WEBHOOK_URL")
    for name in (*named, "HUIFANG_DEMO"):
        assert name in run.stderr, run.stderr
    assert "dev-agent" not in run.stderr and "dev-webhook-secret" not in run.stderr


def test_the_readme_lists_every_setting_production_requires() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Running in production", 1)[1].split("\n## ", 1)[0]
    for name in sorted({name for _, name in CASES.values()}):
        assert f"`{name}`" in section, name
    assert "KAFKA_SECURITY_PROTOCOL=SASL_SSL" in section and "SCRAM-SHA-512" in section
