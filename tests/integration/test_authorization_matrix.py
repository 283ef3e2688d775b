"""The authorization matrix (CONTRACT.md section 3): every endpoint × no key, a wrong key and each role.

No key and a wrong key are 401; a role below the endpoint's is 403; the endpoint's role and those above
it pass. Reads pass with 200 on a real callback and loan; writes are sent to an unknown id, so a
passing key gets 404 (authorization passed, nothing changed) and the matrix leaves no effects behind.
Each request comes from an address of its own, so the failed-authentication lockout stays out of it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.outcomes_support import due_callbacks
from tests.support import KEYS, Huifang

RANK = {"agent": 1, "supervisor": 2, "admin": 3}
CALLERS = ("no key", "wrong key", "agent", "supervisor", "admin")


@dataclass(frozen=True)
class Endpoint:
    service: str
    method: str
    path: str
    role: str  # the lowest role the contract allows
    passed: int  # the status a caller who may do it gets here: 200 on a read, 404 on a write to an unknown id
    body: dict[str, Any] | None = None

    @property
    def write(self) -> bool:
        return self.method == "POST"


ENDPOINTS = [
    Endpoint("scheduler", "GET", "/v1/callbacks", "agent", 200),
    Endpoint("scheduler", "GET", "/v1/callbacks/{callback_id}", "agent", 200),
    Endpoint("scheduler", "POST", "/v1/callbacks/{callback_id}/cancel", "supervisor", 404, {"reason": "operator"}),
    Endpoint("scheduler", "GET", "/v1/policy", "agent", 200),
    Endpoint("outcomes", "POST", "/v1/callbacks/{callback_id}/attempts", "agent", 404, {"disposition": "no_answer"}),
    Endpoint("outcomes", "GET", "/v1/callbacks/{callback_id}/attempts", "agent", 200),
    Endpoint("outcomes", "GET", "/v1/loans/{loan_id}/verification", "agent", 200),
    Endpoint("outcomes", "GET", "/v1/stats/refusals", "supervisor", 200),
    Endpoint("notifier", "GET", "/v1/notifications", "supervisor", 200),
    Endpoint("notifier", "GET", "/v1/escalations", "supervisor", 200),
    Endpoint("notifier", "POST", "/v1/escalations/{escalation_id}/ack", "supervisor", 404, {"note": ""}),
    Endpoint("notifier", "POST", "/v1/escalations/{escalation_id}/resolve", "supervisor", 404, {"note": ""}),
]
_targets: dict[int, dict[str, str]] = {}


async def targets(huifang: Huifang) -> dict[str, str]:
    """A real loan and callback of this system, made once."""
    if id(huifang) not in _targets:
        loan, callbacks = await due_callbacks(huifang)
        _targets[id(huifang)] = {"loan_id": loan, "callback_id": callbacks["borrower"]}
    return _targets[id(huifang)]


def expected(endpoint: Endpoint, caller: str) -> int:
    if caller in ("no key", "wrong key"):
        return 401
    return endpoint.passed if RANK[caller] >= RANK[endpoint.role] else 403


def headers(caller: str) -> dict[str, str]:
    n = uuid.uuid4().int
    found = {"X-Forwarded-For": f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250 + 1}"}
    if caller == "wrong key":
        found["Authorization"] = "Bearer not-a-key-of-ours"
    elif caller != "no key":
        found["Authorization"] = f"Bearer {KEYS[caller]}"
    return found


async def test_the_matrix_lists_every_endpoint(huifang: Huifang) -> None:
    served = set()
    for service in ("scheduler", "outcomes", "notifier"):
        async with httpx.AsyncClient(base_url=huifang.url(service), timeout=10) as client:
            paths = (await client.get("/openapi.json")).json()["paths"]
        served |= {(service, m.upper(), p) for p, ops in paths.items() if p.startswith("/v1/") for m in ops}
    assert served == {(e.service, e.method, e.path) for e in ENDPOINTS}


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.method} {e.service}{e.path}")
async def test_every_caller_gets_what_the_contract_says(huifang: Huifang, endpoint: Endpoint) -> None:
    real = await targets(huifang)
    unknown = {"callback_id": "NOPE-1", "escalation_id": "NOPE-1"}
    path = endpoint.path.format(**(unknown if endpoint.write else real))
    got = {}
    async with httpx.AsyncClient(base_url=huifang.url(endpoint.service), timeout=10) as client:
        for caller in CALLERS:
            response = await client.request(endpoint.method, path, json=endpoint.body, headers=headers(caller))
            got[caller] = response.status_code
    assert got == {caller: expected(endpoint, caller) for caller in CALLERS}
