"""docker-compose.yml and the Dockerfile agree with the public contract (CONTRACT.md sections 1, 5, 6)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

# CONTRACT.md section 5 (plus HUIFANG_TOPIC_PREFIX from section 2.1): the only configuration
# a Huifang container may be given. A new name here is a contract change.
CONTRACT_VARIABLES = frozenset(
    {
        "KAFKA_BOOTSTRAP_SERVERS",
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_MECHANISM",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
        "KAFKA_SSL_CAFILE",
        "DATABASE_URL",
        "HUIFANG_API_KEYS",
        "HUIFANG_POLICY_FILE",
        "HUIFANG_ENV",
        "HUIFANG_ENCRYPTION_KEY",
        "HUIFANG_NOTIFY_WEBHOOK_URL",
        "HUIFANG_WEBHOOK_SECRET",
        "HUIFANG_SMTP_HOST",
        "HUIFANG_SMTP_PORT",
        "HUIFANG_SMTP_FROM",
        "HUIFANG_SMS_WEBHOOK_URL",
        "HUIFANG_SCHEDULER_PORT",
        "HUIFANG_OUTCOMES_PORT",
        "HUIFANG_NOTIFIER_PORT",
        "HUIFANG_TOPIC_PREFIX",
        "HUIFANG_INDEX_KEY",
        "HUIFANG_LINK_SECRET",
        "HUIFANG_PUBLIC_URL",
        "HUIFANG_SMTP_USERNAME",
        "HUIFANG_SMTP_PASSWORD",
        "HUIFANG_SMTP_TLS",
        "HUIFANG_FORWARDED_ALLOW_IPS",
    }
)
# The compose file's own variables: they only fill in a contract variable (the database password in DATABASE_URL).
COMPOSE_VARIABLES = frozenset({"POSTGRES_PASSWORD"})

# CONTRACT.md section 1.
SERVICE_PORTS = {"scheduler": 8001, "outcomes": 8002, "notifier": 8003}
HUIFANG_CONTAINERS = ("topics", *SERVICE_PORTS)
COMMON_ENV = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "DATABASE_URL",
    "HUIFANG_ENCRYPTION_KEY",
    "HUIFANG_API_KEYS",
    "HUIFANG_ENV",
)
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """The service's environment as a mapping, whether compose has it as a list or a mapping."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, None) for item in env)
        return {key: value for key, value in pairs}
    return {key: None if value is None else str(value) for key, value in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """depends_on as name -> condition (the short list form means service_started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def strings_in(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in (*strings_in(key), *strings_in(value))]
    if isinstance(node, list):
        return [s for item in node for s in strings_in(item)]
    return [node] if isinstance(node, str) else []


def published_container_ports(service: dict[str, Any]) -> set[int]:
    ports: set[int] = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            ports.add(int(str(port).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def test_no_obsolete_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose


def test_all_services_present(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "postgres", "topics", "scheduler", "outcomes", "notifier"} <= services.keys()


def test_kafka_is_the_official_image_in_kraft_mode(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].split(":")[0] == "apache/kafka"
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "kafka-broker-api-versions.sh" in " ".join(strings_in(kafka["healthcheck"]["test"]))
    assert kafka.get("volumes")


def test_postgres(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]
    assert postgres["image"].split(":")[0] == "postgres"
    env = environment(postgres)
    assert env["POSTGRES_USER"] == env["POSTGRES_DB"] == "huifang"
    assert env["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"  # never the user name
    assert "pg_isready" in " ".join(strings_in(postgres["healthcheck"]["test"]))
    assert postgres.get("volumes")


def test_topics_job(services: dict[str, dict[str, Any]]) -> None:
    topics = services["topics"]
    assert topics["build"] in (".", {"context": "."})
    assert topics["command"] == ["topics", "create"]
    assert str(topics["restart"]) == "no"
    assert depends_on(topics) == {"kafka": "service_healthy"}
    assert environment(topics)["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


@pytest.mark.parametrize(("name", "port"), SERVICE_PORTS.items())
def test_huifang_service(services: dict[str, dict[str, Any]], name: str, port: int) -> None:
    service = services[name]
    assert service["build"] in (".", {"context": "."})
    assert service["command"] == ["run", name]
    assert port in published_container_ports(service)
    assert depends_on(service) == {
        "kafka": "service_healthy",
        "postgres": "service_healthy",
        "topics": "service_completed_successfully",
    }

    env = environment(service)
    for key in COMMON_ENV:
        assert env.get(key), f"{name} lacks {key}"
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    # The bundled Kafka is plaintext, which production refuses; production is the caller's to ask for.
    assert env["HUIFANG_ENV"] == "${HUIFANG_ENV:-development}"
    assert env["DATABASE_URL"].startswith("postgresql+asyncpg://huifang:${POSTGRES_PASSWORD:?")
    assert all(str(p).startswith("127.0.0.1:") for p in service["ports"])  # never on every interface
    # Secrets come from the caller's environment and compose refuses to start without them.
    assert env["HUIFANG_ENCRYPTION_KEY"].startswith("${HUIFANG_ENCRYPTION_KEY:?")
    assert env["HUIFANG_API_KEYS"].startswith("${HUIFANG_API_KEYS:?")

    probe = " ".join(strings_in(service["healthcheck"]["test"]))
    assert f"http://127.0.0.1:{port}/readyz" in probe


def test_notifier_channels(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["notifier"])
    assert "HUIFANG_NOTIFY_WEBHOOK_URL" in env
    assert env["HUIFANG_WEBHOOK_SECRET"].startswith("${HUIFANG_WEBHOOK_SECRET:?")
    for key in ("HUIFANG_SMTP_HOST", "HUIFANG_SMTP_PORT", "HUIFANG_SMTP_FROM", "HUIFANG_SMS_WEBHOOK_URL"):
        assert key in env


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name == "topics":  # a one-shot job: services wait for its exit code instead
            continue
        healthcheck = service.get("healthcheck")
        assert healthcheck and healthcheck.get("test") and not healthcheck.get("disable"), name


@pytest.mark.parametrize("name", HUIFANG_CONTAINERS)
def test_only_contract_variables_reach_huifang(services: dict[str, dict[str, Any]], name: str) -> None:
    service = services[name]
    names = set(environment(service))
    names |= {match for text in strings_in(service) for match in INTERPOLATION.findall(text)}
    assert names <= CONTRACT_VARIABLES | COMPOSE_VARIABLES, sorted(names - CONTRACT_VARIABLES - COMPOSE_VARIABLES)


def dockerfile_instructions(text: str) -> list[str]:
    """The Dockerfile's instructions, comments dropped and continuation lines joined."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [" ".join(part.rstrip("\\").strip() for part in chunk) for chunk in _chunks(lines)]


def _chunks(lines: list[str]) -> list[list[str]]:
    chunks: list[list[str]] = []
    continued = False
    for line in lines:
        if continued:
            chunks[-1].append(line)
        else:
            chunks.append([line])
        continued = line.endswith("\\")
    return chunks


def test_dockerfile(dockerfile: str) -> None:
    instructions = dockerfile_instructions(dockerfile)
    assert instructions[0].startswith("FROM python:3.11-slim")
    assert 'ENTRYPOINT ["huifang"]' in instructions
    assert 'CMD ["run"]' in instructions
    copied = " ".join(line for line in instructions if line.startswith("COPY "))
    for source in ("pyproject.toml", "README.md", "shared/", "services/", "policy.toml"):
        assert source in copied, source
    # Every package comes from the hash-checked lock; the project itself adds none of its own choosing.
    assert "COPY requirements.lock ./" in instructions
    assert "RUN pip install --no-cache-dir --require-hashes -r requirements.lock" in instructions
    local = "RUN pip install --no-cache-dir --no-deps --no-build-isolation ."
    assert any(line.startswith(local) for line in instructions)
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    # Configuration baked into the image is held to the contract, or at least to real settings.
    env = dict(re.findall(r"\b([A-Z][A-Z0-9_]*)=(\S+)", " ".join(i for i in instructions if i.startswith("ENV "))))
    settings = {name.upper() for name in Settings.model_fields}
    assert {n for n in env if n.startswith(("HUIFANG_", "KAFKA_", "DATABASE_"))} <= CONTRACT_VARIABLES | settings
    assert env.get("HUIFANG_POLICY_FILE", "").endswith("/policy.toml")
    # Published ports must reach the services: they listen on every interface inside the container.
    assert env.get("HUIFANG_HOST") == "0.0.0.0"


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_lock_pins_every_dependency_with_hashes() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lock = (ROOT / "requirements.lock").read_text()
    pinned = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock, flags=re.M))
    pinned = {name.lower().replace("_", "-"): version for name, version in pinned.items()}
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    missing = sorted({_name(r) for r in wanted} - set(pinned))
    assert not missing, missing
    # Every pinned package carries at least one hash, which is what --require-hashes checks.
    blocks = re.split(r"^(?=[A-Za-z0-9_.-]+==)", lock, flags=re.M)[1:]
    assert blocks and all("--hash=sha256:" in block for block in blocks)


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".local"} <= ignored
