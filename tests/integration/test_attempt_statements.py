"""The attempt POST's cost in the database, on both kinds: one transaction, few statements, claim included.

Statements are counted with SQLAlchemy's `before_cursor_execute` event on the service's own engine,
for the one request that carries the test's X-Request-Id (the service binds it for the request).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import structlog
from sqlalchemy import event

from tests.outcomes_support import due_callbacks, new_id, outcomes_db
from tests.support import Huifang


@contextmanager
def counted(huifang: Huifang, request_id: str) -> Iterator[Counter[str]]:
    """Statements and transactions the service runs for the request with this id."""
    engine = outcomes_db(huifang).engine.sync_engine
    seen: Counter[str] = Counter()

    def ours() -> bool:
        return bool(structlog.contextvars.get_contextvars().get("request_id") == request_id)

    def statement(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        # SQLite's BEGIN IMMEDIATE is the transaction's start, counted as such below.
        if ours() and not sql.startswith("BEGIN"):
            seen["statements"] += 1

    def begin(_conn: Any) -> None:
        if ours():
            seen["transactions"] += 1

    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "begin", begin)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", statement)
        event.remove(engine, "begin", begin)


async def post(huifang: Huifang, callback_id: str, body: dict[str, Any], *, key: str) -> tuple[int, Counter[str]]:
    request_id = new_id("R")
    with counted(huifang, request_id) as seen:
        async with huifang.client("outcomes") as client:
            response = await client.post(
                f"/v1/callbacks/{callback_id}/attempts",
                json=body,
                headers={"Idempotency-Key": key, "X-Request-Id": request_id},
            )
    return response.status_code, seen


@pytest.mark.parametrize("body", [{"disposition": "no_answer", "notes": "rang out"}, {"disposition": "busy"}])
async def test_a_keyed_attempt_is_one_transaction_of_at_most_five_statements(
    huifang: Huifang, body: dict[str, Any]
) -> None:
    _, callbacks = await due_callbacks(huifang)
    status, seen = await post(huifang, callbacks["borrower"], body, key=new_id("K"))
    assert status == 201
    # The claim, the callback locked and read, the attempt, the outbox row, the stored response.
    assert seen["transactions"] == 1 and seen["statements"] <= 5, seen


async def test_a_closing_attempt_is_one_transaction(huifang: Huifang) -> None:
    _, callbacks = await due_callbacks(huifang, roles=("borrower", "guarantor"))
    body = {"disposition": "refused", "reason_code": "distrust"}
    status, seen = await post(huifang, callbacks["borrower"], body, key=new_id("K"))
    assert status == 201
    # Closing locks the loan's callbacks and writes the close: one statement more. Its two events are
    # one outbox INSERT on PostgreSQL; SQLite's ORM flush writes them one by one.
    most = 6 if huifang.kind == "postgresql" else 7
    assert seen["transactions"] == 1 and seen["statements"] <= most, seen


async def test_the_attempt_that_completes_the_loan_is_still_one_transaction(huifang: Huifang) -> None:
    loan, callbacks = await due_callbacks(huifang)
    status, seen = await post(huifang, callbacks["borrower"], {"disposition": "completed"}, key=new_id("K"))
    assert status == 201
    # The stage's report is one statement more, in the same transaction.
    assert seen["transactions"] == 1 and seen["statements"] <= (7 if huifang.kind == "postgresql" else 8), seen
    await huifang.tap.wait_events("loan.verification.completed", loan)


async def test_a_replay_is_one_transaction_and_one_or_two_statements(huifang: Huifang) -> None:
    _, callbacks = await due_callbacks(huifang)
    key = new_id("K")
    first, _ = await post(huifang, callbacks["borrower"], {"disposition": "no_answer"}, key=key)
    again, seen = await post(huifang, callbacks["borrower"], {"disposition": "no_answer"}, key=key)
    assert first == again == 201
    assert seen["transactions"] == 1 and seen["statements"] <= 2, seen
