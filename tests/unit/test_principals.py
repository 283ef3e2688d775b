"""Who acts (CONTRACT.md section 3): agents are who their key says; supervisors may record for a named agent."""

from __future__ import annotations

import httpx
import pytest

from cli.main import server_config
from services.outcomes.app import create_app as outcomes_app
from services.outcomes.attempts import acting_agent
from shared.errors import Rejected
from shared.settings import Settings
from shared.web import Keyring, key_id

SUPERVISOR_KEY = "supervisor-key-for-principals"


def test_an_agent_acts_as_their_principal() -> None:
    assert acting_agent(role="agent", principal="agent-7", claimed=None) == "agent-7"
    assert acting_agent(role="agent", principal="agent-7", claimed="agent-7") == "agent-7"


def test_an_agent_naming_another_agent_is_403() -> None:
    with pytest.raises(Rejected) as refused:
        acting_agent(role="agent", principal="agent-7", claimed="agent-8")
    assert refused.value.status == 403


@pytest.mark.parametrize("role", ["supervisor", "admin"])
def test_a_supervisor_or_admin_records_for_the_named_agent_or_as_themselves(role: str) -> None:
    assert acting_agent(role=role, principal="lead-1", claimed="agent-8") == "agent-8"
    assert acting_agent(role=role, principal="lead-1", claimed=None) == "lead-1"


def test_an_older_key_without_principal_takes_the_body_agent_id() -> None:
    assert acting_agent(role="agent", principal=None, claimed="A-1") == "A-1"
    with pytest.raises(Rejected) as missing:
        acting_agent(role="agent", principal=None, claimed=None)
    assert missing.value.status == 422


def test_fingerprints_are_keyed() -> None:
    assert key_id("k", secret=b"one") != key_id("k", secret=b"two")
    keyring = Keyring([], secret=b"one")
    assert keyring.find("k") is None


def settings(env: str) -> Settings:
    base = Settings(huifang_api_keys=f"supervisor:sup-1:{SUPERVISOR_KEY}")  # type: ignore[arg-type]
    # Production's other requirements (TLS Kafka, secrets) are the guard's test; here only the cookie matters.
    return base.model_copy(update={"huifang_env": env})


@pytest.mark.parametrize(("env", "secure"), [("production", True), ("development", False)])
async def test_the_session_cookie_is_secure_in_production_even_over_http(env: str, secure: bool) -> None:
    app = outcomes_app(settings(env))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://behind-a-tls-proxy") as client:
        login = await client.post("/dashboard/login", data={"key": SUPERVISOR_KEY})
    assert login.status_code == 303
    assert ("Secure" in login.headers["set-cookie"]) is secure


def test_uvicorn_trusts_forwarded_headers_only_from_the_configured_proxies() -> None:
    configured = Settings(huifang_forwarded_allow_ips="10.0.0.5,10.0.0.6")
    config = server_config(object(), service="outcomes", settings=configured)
    assert config.proxy_headers is True
    assert config.forwarded_allow_ips == "10.0.0.5,10.0.0.6"
    assert server_config(object(), service="outcomes", settings=Settings()).forwarded_allow_ips == "127.0.0.1"
