"""The party's page rules that need outcomes' database but not the broker (both kinds)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlmodel import select

from services.outcomes.models import Attempt, PartyAction
from services.outcomes.party import page
from services.outcomes.verification import track_callback
from shared.crypto import Cipher, generate_key
from shared.db import Database, utcnow
from shared.events import CallbackNoticeRequested, CallbackScheduled
from shared.outbox import OutboxMessage
from shared.policy import Policy, SelfService
from tests.support import service_database

CIPHER = Cipher([generate_key()])
ITEMS = ["identity", "loan_amount"]


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with service_database(database_url, "outcomes", cipher=CIPHER) as db:
        yield db


async def opened(db: Database, callback_id: str) -> page.PageState:
    """A callback whose notice (with its page link) outcomes has consumed."""
    now = utcnow()
    ref = dict(
        loan_id=f"L-{callback_id}", callback_id=callback_id, party_id="P-1", role="borrower", stage="final_check",
        branch_id="BR-1", attempt=1, state="scheduled",
    )  # fmt: skip
    scheduled = CallbackScheduled(
        **ref, due_at=now + timedelta(hours=2), deadline=now + timedelta(days=5), notice_at=now,
        verification_items=ITEMS,
    )  # fmt: skip
    notice = CallbackNoticeRequested(
        **ref, channel="sms", due_at=now + timedelta(hours=2), purpose="p", topics=[], language="zh-CN",
        name="张伟", phone="+8613800138000", caller_code="483920", self_service_url="http://x/p/t",
        deadline=now + timedelta(days=5), timezone="Asia/Shanghai", slots=[now + timedelta(days=1)],
    )  # fmt: skip
    async with db.uow() as uow:
        await track_callback(uow=uow, event=scheduled)
        await page.keep_page(uow=uow, event=notice, cipher=CIPHER)
        await uow.commit()
    async with db.uow() as uow:
        state = await page.load(uow=uow, callback_id=callback_id)
    assert state is not None
    return state


async def test_without_confirm_closes_the_answers_wait_for_the_agent(database: Database) -> None:
    state = await opened(database, "CB-keep")
    policy = Policy(self_service=SelfService(confirm_closes=False))
    form = page.PartyForm(action="confirm", items=ITEMS)
    for _ in range(2):  # a repeated post changes nothing
        async with database.uow() as uow:
            await page.act(uow=uow, state=state, form=form, policy=policy, cipher=CIPHER)
            await uow.commit()
    async with database.uow() as uow:
        after = await page.load(uow=uow, callback_id="CB-keep")
        attempts = list((await uow.session.execute(select(Attempt))).scalars())
        outbox = list((await uow.session.execute(select(OutboxMessage))).scalars())
        kept = list((await uow.session.execute(select(PartyAction))).scalars())
    assert after is not None and not after.closed and after.view.state == "scheduled"
    assert attempts == [] and outbox == []  # no attempt, no event: the call stays
    assert [(a.action, a.items) for a in kept] == [("confirm", '["identity", "loan_amount"]')]


async def test_the_page_keeps_only_the_masked_name_and_encrypted_code(database: Database) -> None:
    state = await opened(database, "CB-mask")
    assert CIPHER.decrypt(state.page.masked_name_enc) == "张*"
    assert state.page.caller_code_enc is not None and CIPHER.decrypt(state.page.caller_code_enc) == "483920"
    assert "483920" not in state.page.caller_code_enc and "张" not in state.page.masked_name_enc
    assert page.mask_name("Anna Lee") == "A*" and page.mask_name(" ") == "*"
