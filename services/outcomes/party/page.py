"""The party's own page (CONTRACT.md 3.1): what it knows, and the four actions, each taking effect once."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import cast

import sqlalchemy as sa
from sqlmodel import col, select

from services.outcomes.attempts import AttemptIn, record_attempt
from services.outcomes.models import CallbackView, PartyAction, PartyActionName, PartyPage, PartyPost
from services.outcomes.verification import lock_loan
from shared.crypto import Cipher
from shared.db import UnitOfWork, utcnow
from shared.errors import Rejected
from shared.events import CLOSED_STATES, CallbackDue, CallbackNoticeRequested, ReasonCode, message_language
from shared.labels import REASONS
from shared.policy import Policy

ACTIONS: tuple[PartyActionName, ...] = ("confirm", "reschedule", "decline", "not_me")
# "I never applied" has its own button, so the decline list leaves it out.
DECLINE_REASONS: tuple[ReasonCode, ...] = tuple(r for r in REASONS if r != "suspected_fraud")
MAX_TEXT = 1000
POSTS_PER_MINUTE = 10
POST_WINDOW = timedelta(minutes=1)


class PageError(Exception):
    """A post the page cannot take: shown on the page with its status; `code` picks the message."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class PartyForm:
    """The fields of one posted form."""

    action: str
    items: list[str] = field(default_factory=list)
    slot: str = ""
    reason: str = ""
    text: str = ""


@dataclass(frozen=True)
class PageState:
    """Everything the page shows about one callback."""

    view: CallbackView
    page: PartyPage
    actions: dict[str, PartyAction]

    @property
    def closed(self) -> bool:
        return self.view.state in CLOSED_STATES

    def slots(self, *, now: datetime) -> list[datetime]:
        """The offered slots still ahead and before the deadline."""
        times = [datetime.fromisoformat(s) for s in json.loads(self.page.slots)]
        deadline = self.view.deadline
        return [t for t in times if t > now and (deadline is None or t < deadline)]


def mask_name(name: str) -> str:
    """The first character and a star (张伟 → 张*): enough to recognise, too little to identify."""
    name = name.strip()
    return f"{name[:1]}*" if name else "*"


async def keep_page(*, uow: UnitOfWork, event: CallbackNoticeRequested | CallbackDue, cipher: Cipher) -> None:
    """Keep what the page needs from a personal event: the name only masked, the code and the name encrypted."""
    row = await uow.session.get(PartyPage, event.callback_id)
    if row is None:
        row = PartyPage(callback_id=event.callback_id, language="zh-CN", timezone="Asia/Shanghai", masked_name_enc="")
    row.language = message_language(event.language)
    row.timezone = event.timezone or row.timezone
    row.masked_name_enc = cipher.encrypt(mask_name(event.name))
    if event.caller_code:
        row.caller_code_enc = cipher.encrypt(event.caller_code)
    row.slots = json.dumps([s.isoformat() for s in event.slots])
    row.linked = row.linked or event.self_service_url is not None
    row.updated_at = utcnow()
    uow.session.add(row)
    await uow.session.flush()


async def load(*, uow: UnitOfWork, callback_id: str) -> PageState | None:
    """The page of a callback whose link the scheduler issued, or None."""
    view = await uow.session.get(CallbackView, callback_id, populate_existing=True)
    page = await uow.session.get(PartyPage, callback_id)
    if view is None or page is None or not page.linked:
        return None
    rows = await uow.session.execute(select(PartyAction).where(PartyAction.callback_id == callback_id))
    return PageState(view=view, page=page, actions={a.action: a for a in rows.scalars()})


async def note_post(*, uow: UnitOfWork, callback_id: str, now: datetime) -> int:
    """Count a post to the page; the number of posts in the last minute, this one included."""
    await uow.session.execute(
        sa.delete(PartyPost).where(col(PartyPost.callback_id) == callback_id, col(PartyPost.at) < now - POST_WINDOW)
    )
    uow.session.add(PartyPost(callback_id=callback_id, at=now))
    await uow.session.flush()
    count = await uow.session.scalar(
        select(sa.func.count()).where(col(PartyPost.callback_id) == callback_id, col(PartyPost.at) > now - POST_WINDOW)
    )
    return int(count or 0)


def _attempt(form: PartyForm, state: PageState, *, policy: Policy, now: datetime) -> AttemptIn | None:
    """The attempt an action records (None when it records none), or PageError for a form that does not fit."""
    if form.action == "confirm":
        wanted = set(json.loads(state.view.verification_items))
        if set(form.items) != wanted:
            raise PageError(422, "tick_all")
        if not policy.self_service.confirm_closes:
            return None  # the answers wait for the agent's call
        return AttemptIn(disposition="completed", verification=dict.fromkeys(sorted(wanted), True))
    if form.action == "reschedule":
        offered = {s.isoformat(): s for s in state.slots(now=now)}
        slot = offered.get(_utc_iso(form.slot))
        if slot is None:
            raise PageError(422, "slot")
        return AttemptIn(disposition="reschedule_requested", reschedule_to=slot)
    if form.action == "decline":
        if form.reason not in DECLINE_REASONS:
            raise PageError(422, "reason")
        if len(form.text) > MAX_TEXT:
            raise PageError(422, "text")
        return AttemptIn(disposition="refused", reason_code=form.reason, notes=form.text.strip() or None)
    if form.action == "not_me":
        return AttemptIn(disposition="refused", reason_code="suspected_fraud")
    raise PageError(422, "action")


def _utc_iso(value: str) -> str:
    """An RFC 3339 time as the page stores it, or "" when it is not one."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return ""
    if moment.tzinfo is None:
        return ""
    return moment.astimezone(UTC).isoformat()


async def act(*, uow: UnitOfWork, state: PageState, form: PartyForm, policy: Policy, cipher: Cipher) -> None:
    """Take one action once: a repeated one, or any on a closed callback, changes nothing."""
    await lock_loan(uow=uow, loan_id=state.view.loan_id)  # two posts at once take turns (PostgreSQL)
    fresh = await load(uow=uow, callback_id=state.view.callback_id)
    if fresh is None or fresh.closed or form.action in fresh.actions:
        return
    now = utcnow()
    body = _attempt(form, fresh, policy=policy, now=now)
    row = PartyAction(
        callback_id=fresh.view.callback_id,
        action=cast(PartyActionName, form.action),
        items=json.dumps(sorted(form.items)),
        at=now,
    )
    if body is not None:
        try:
            attempt = await record_attempt(
                uow=uow, callback_id=fresh.view.callback_id, body=body, cipher=cipher, channel="self_service"
            )
        except Rejected as exc:
            raise PageError(exc.status, "closed") from None
        row.attempt_id, row.slot, row.reason_code = attempt.attempt_id, attempt.reschedule_to, body.reason_code
    uow.session.add(row)
    await uow.session.flush()
