"""Helpers for the outcomes tests: the service's own database, seeded callback rows, due callbacks."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from services.outcomes.models import CallbackView
from shared.db import Database
from tests.support import Huifang, loan_event


def outcomes_db(huifang: Huifang) -> Database:
    """The outcomes service's own database, as the running service uses it."""
    db: Database = huifang.servers["outcomes"][0].config.app.state.runtime.db  # type: ignore[attr-defined]
    return db


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def closed_view(
    *, branch: str, closed_at: datetime, final: str, role: str = "borrower", stage: str = "final_check", **extra: Any
) -> CallbackView:
    """A callback closed at a chosen time, as outcomes would have recorded it."""
    state = final.split(":")[0]
    return CallbackView(
        callback_id=new_id("CB"),
        loan_id=new_id("L"),
        stage=stage,
        branch_id=branch,
        party_id="P-1",
        role=role,
        state=state,
        attempt=1,
        final_disposition=final,
        closed_at=closed_at,
        updated_at=closed_at,
        **extra,
    )


async def seed(huifang: Huifang, rows: list[Any]) -> None:
    """Insert rows straight into outcomes' tables."""
    async with outcomes_db(huifang).uow() as uow:
        uow.session.add_all(rows)
        await uow.commit()


async def due_callbacks(
    huifang: Huifang, roles: tuple[str, ...] = ("borrower",), branch: str = "BR-SH-001"
) -> tuple[str, dict[str, str]]:
    """Publish a loan and wait until outcomes can take attempts for it: (loan_id, role -> callback_id)."""
    loan = new_id("L")
    await huifang.publish_event("loan.stage.changed", {**loan_event(loan, roles=roles), "branch_id": branch}, key=loan)
    due = await huifang.tap.wait_events("callback.due", loan, count=len(roles))
    return loan, {e["data"]["role"]: e["data"]["callback_id"] for e in due}
