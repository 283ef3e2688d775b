"""Key rotation (CONTRACT.md 5, 6): the phone index has its own key, `huifang rekey` rotates live and twice."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from pytest_httpserver import HTTPServer

from cli.rekey import rekey_all, sealed_columns
from services.scheduler.models import Callback, PersonCall
from shared.crypto import Cipher, generate_key
from shared.db import ENCRYPTED_PREFIX, Database, resolve_url, utcnow
from shared.settings import Settings
from tests.support import ROOT, Huifang, loan_event, wait_for

PHONE = "+8613912345678"
OTHER_PHONE = "+8613987654321"
INDEX_KEY = "index-key-for-rotation-tests-0123456789"


def _legacy_index(key: str, phone: str) -> str:
    """The index before HUIFANG_INDEX_KEY: keyed from the oldest encryption key, the phone only stripped."""
    secret = hashlib.sha256(b"huifang-index:" + key.encode()).digest()
    return hmac.new(secret, phone.strip().encode(), hashlib.sha256).hexdigest()


def _callback(cipher: Cipher, *, phone: str, index: str, contact_enc: str | None = None) -> dict[str, Any]:
    now = utcnow()
    return {
        "callback_id": str(uuid.uuid4()),
        "loan_id": f"L-{uuid.uuid4().hex[:8]}",
        "stage": "final_check",
        "branch_id": "BR-1",
        "party_id": f"P-{uuid.uuid4().hex[:6]}",
        "role": "borrower",
        "state": "scheduled",
        "attempt": 1,
        "calls_made": 0,
        "contact_enc": contact_enc or cipher.encrypt_json({"name": "张伟", "phone": phone}),
        "phone_index": index,
        "timezone": "Asia/Shanghai",
        "language": "zh-CN",
        "contact_consent": True,
        "due_at": now,
        "deadline": now + timedelta(days=5),
        "notice_at": now,
        "flags": "",
        "created_at": now,
        "updated_at": now,
    }


PERSON_CALL_COLUMNS = ("attempt_id", "callback_id", "party_id", "phone_index", "local_day", "called_at")


def _as_of(model: Any, row: dict[str, Any]) -> sa.TableClause:
    """The model's table with only these columns: the schema at an older revision lacks later ones."""
    columns = model.__table__.c
    return sa.table(model.__tablename__, *(sa.column(name, columns[name].type) for name in row))


async def test_the_migration_back_fills_the_phone_index_with_the_index_key(database_url: str) -> None:
    old_key = generate_key()
    cipher = Cipher([old_key], index_key=INDEX_KEY)
    db = Database(database_url, schema=f"t{uuid.uuid4().hex[:8]}_scheduler", source="/t", cipher=cipher)
    migrations = ROOT / "services" / "scheduler" / "migrations"
    try:
        await db.migrate(migrations, target="0005")
        spaced, compact = "+86 139 1234 5678", PHONE
        rows = [_callback(cipher, phone=p, index=_legacy_index(old_key, p)) for p in (spaced, compact)]
        unreadable = _callback(
            cipher, phone=PHONE, index="unreadable", contact_enc=Cipher([generate_key()]).encrypt_json({"phone": PHONE})
        )
        async with db.engine.begin() as conn:
            await conn.execute(sa.insert(_as_of(Callback, rows[0])), [*rows, unreadable])
            await conn.execute(
                sa.insert(_as_of(PersonCall, dict.fromkeys(PERSON_CALL_COLUMNS))),
                [
                    {
                        "attempt_id": str(uuid.uuid4()),
                        "callback_id": row["callback_id"],
                        "party_id": row["party_id"],
                        "phone_index": row["phone_index"],
                        "local_day": datetime.now(ZoneInfo("Asia/Shanghai")).date(),
                        "called_at": utcnow(),
                    }
                    for row in rows
                ],
            )
        await db.migrate(migrations)
        async with db.engine.connect() as conn:
            indexes = dict((await conn.execute(sa.select(Callback.callback_id, Callback.phone_index))).all())
            calls = dict((await conn.execute(sa.select(PersonCall.callback_id, PersonCall.phone_index))).all())
        wanted = Cipher([generate_key()], index_key=INDEX_KEY).phone_index(PHONE)
        assert [indexes[row["callback_id"]] for row in rows] == [wanted, wanted]
        assert [calls[row["callback_id"]] for row in rows] == [wanted, wanted]
        assert indexes[unreadable["callback_id"]] == "unreadable"
    finally:
        await db.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def system(
    request: pytest.FixtureRequest, kafka_bootstrap: str, webhook_server: HTTPServer, tmp_path: Path
) -> AsyncIterator[Huifang]:
    """A Huifang of its own: this test restarts its services with other keys."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    huifang = Huifang(
        kind=request.param, bootstrap=kafka_bootstrap, database_url=url, workdir=tmp_path, webhook=webhook_server
    )
    await huifang.start()
    try:
        yield huifang
    finally:
        await huifang.stop()


async def _restart(system: Huifang, settings: Settings) -> None:
    for service in ("scheduler", "outcomes", "notifier"):
        await system.stop_service(service)
        await system.start_service(service, settings)


async def _sealed_values(settings: Settings) -> list[str]:
    """Every encrypted value stored by every service."""
    values = []
    for service in ("scheduler", "outcomes", "notifier"):
        url = resolve_url(settings.database_url, settings.huifang_data_dir, service)
        db = Database(url, schema=f"{settings.huifang_db_schema_prefix}{service}", source="/t")
        try:
            async with db.engine.connect() as conn:
                for model, columns in sealed_columns(service).items():
                    table = model.__table__  # type: ignore[attr-defined]
                    for column in columns:
                        found = (await conn.execute(sa.select(table.c[column]))).scalars()
                        values += [v.removeprefix(ENCRYPTED_PREFIX) for v in found if v and v[:1] != "{"]
        finally:
            await db.dispose()
    return values


def _stage(loan: str, phone: str) -> dict[str, Any]:
    data = loan_event(loan, roles=("borrower",))
    data["parties"][0]["phone"] = phone
    data["officer"]["phone"] = "+8613700000001"
    return data


async def _due_day(system: Huifang, loan: str) -> Any:
    (scheduled,) = await system.tap.wait_events("callback.scheduled", loan)
    return datetime.fromisoformat(scheduled["data"]["due_at"]).astimezone(ZoneInfo("Asia/Shanghai")).date()


async def test_keys_rotate_under_a_running_service_and_the_old_key_retires(system: Huifang) -> None:
    settings = system.settings
    old_key = (settings.huifang_data_dir / "encryption.key").read_text().strip()
    index_key = (settings.huifang_data_dir / "index.key").read_text().strip()
    run = uuid.uuid4().hex[:6]
    first, second, third, other = (f"L-{run}-{n}" for n in ("a", "b", "c", "d"))
    # One person on two loans, written two ways: today holds their daily cap of two calls.
    await system.publish_event("loan.stage.changed", _stage(first, "+86 139 1234 5678"), key=first)
    await system.publish_event("loan.stage.changed", _stage(other, OTHER_PHONE), key=other)
    await system.tap.wait_events("callback.due", first)
    (due,) = await system.tap.wait_events("callback.due", other)
    new_key = generate_key()
    both = settings.model_copy(
        update={"huifang_encryption_key": SecretStr(f"{new_key},{old_key}"), "huifang_index_key": SecretStr(index_key)}
    )
    await _restart(system, both)
    # Rekey while the service takes in a new loan.
    await system.publish_event("loan.stage.changed", _stage(second, PHONE), key=second)
    tally, _ = await asyncio.gather(
        rekey_all(settings=both, services=["scheduler", "outcomes", "notifier"]),
        system.tap.wait_events("callback.due", second),
    )
    assert tally.rotated.get("scheduler", 0) >= 2 and tally.rotated.get("notifier", 0) >= 2 and not tally.unreadable
    again = await rekey_all(settings=both, services=["scheduler", "outcomes", "notifier"])
    assert again.rotated == {} and again.unreadable == {}  # a second run has nothing to do

    retired = both.model_copy(update={"huifang_encryption_key": SecretStr(new_key)})
    await _restart(system, retired)
    sealed = await _sealed_values(retired)
    assert sealed and all(Cipher([new_key]).decrypt(v) for v in sealed)  # readable with the new key alone
    # The third loan of the same person, written a third way, is matched to the first two by the index.
    await system.publish_event("loan.stage.changed", _stage(third, "+86-139-1234-5678"), key=third)
    today = await _due_day(system, first)
    assert await _due_day(system, second) == today
    assert await _due_day(system, third) > today
    # Another person's contact, stored under the old key and rekeyed, is read again for a retry.
    async with system.client("outcomes") as client:
        body = {"disposition": "no_answer", "notes": "rang out"}

        async def recorded() -> bool:
            answer = await client.post(f"/v1/callbacks/{due['data']['callback_id']}/attempts", json=body)
            return answer.status_code == 201

        await wait_for(recorded, what="outcomes to take the attempt")
    retry = await system.tap.wait_events("callback.due", other, count=2)
    assert retry[-1]["data"]["phone"] == OTHER_PHONE and retry[-1]["data"]["attempt"] == 2


async def test_huifang_rekey_command_rotates_once_and_names_what_it_cannot_read(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    old_key, new_key = generate_key(), generate_key()
    old = Cipher([old_key], index_key=INDEX_KEY)
    db = Database(resolve_url(None, tmp_path, "scheduler"), schema="scheduler", source="/t", cipher=old)
    try:
        await db.migrate(ROOT / "services" / "scheduler" / "migrations")
        lost = Cipher([generate_key()]).encrypt_json({"phone": PHONE})
        async with db.engine.begin() as conn:
            rows = [_callback(old, phone=PHONE, index="i"), _callback(old, phone=PHONE, index="i", contact_enc=lost)]
            await conn.execute(sa.insert(Callback.__table__), rows)  # type: ignore[attr-defined]
    finally:
        await db.dispose()
    env = {
        "HUIFANG_DATA_DIR": str(tmp_path),
        "HUIFANG_ENCRYPTION_KEY": f"{new_key},{old_key}",
        "HUIFANG_INDEX_KEY": INDEX_KEY,
        "HUIFANG_ENV": "test",
    }

    def rekey() -> Any:
        return CliRunner().invoke(app, ["rekey", "scheduler"], env=env)

    first = await asyncio.to_thread(rekey)
    assert first.exit_code == 1 and "scheduler: 1 values re-encrypted, 1 unreadable" in first.output
    again = await asyncio.to_thread(rekey)
    assert "scheduler: 0 values re-encrypted, 1 unreadable" in again.output
    db = Database(resolve_url(None, tmp_path, "scheduler"), schema="scheduler", source="/t")
    try:
        async with db.engine.connect() as conn:
            stored = (await conn.execute(sa.select(Callback.contact_enc).order_by(Callback.seq))).scalars().all()
    finally:
        await db.dispose()
    assert Cipher([new_key]).decrypt_json(stored[0])["phone"] == PHONE and stored[1] == lost
