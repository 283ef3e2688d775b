"""HTTP in for the party's own page: GET shows it, POST takes one action; plain HTML, no script."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy.exc import IntegrityError

from services.outcomes.party import page
from shared import labels, links
from shared.api import CipherDep, DatabaseDep, PolicyDep
from shared.crypto import Cipher
from shared.db import Database, utcnow
from shared.policy import Policy

HERE = Path(__file__).parent
Language = Literal["zh-CN", "en"]
LANGUAGES: tuple[Language, ...] = ("zh-CN", "en")
MAX_FORM_BYTES = 4096
CSS = (HERE / "page.css").read_text(encoding="utf-8").strip()
_CSS_HASH = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
HEADERS = {
    # One request: the style is inline and pinned by its hash; no script at all.
    "Content-Security-Policy": f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; form-action 'self'; "
    "img-src data:; frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "X-Content-Type-Options": "nosniff",
}
_env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, undefined=StrictUndefined)
router = APIRouter(tags=["party"], include_in_schema=False)


def words(lang: Language) -> Any:
    """The page's prose in one language (templates/<lang>/words.html)."""
    return _env.get_template(f"{lang}/words.html").module


def _html(name: str, *, lang: Language, policy: Policy, status_code: int = 200, **context: Any) -> HTMLResponse:
    body = _env.get_template(name).render(lang=lang, w=words(lang), bank=policy.bank, css=CSS, **context)
    return HTMLResponse(body, status_code=status_code, headers=HEADERS)


def _message(*, policy: Policy, status_code: int, pick: str, lang: Language | None = None) -> HTMLResponse:
    """A short page in the party's language, or both when we do not know it (a bad link)."""
    langs = [lang] if lang else list(LANGUAGES)
    parts = []
    for code in langs:
        w = words(code)
        title, text = {
            "gone": (w.gone_title, w.gone_text(policy.bank.hotline)),
            "busy": (w.busy_title, w.busy_text),
            "forged": (w.gone_title, w.forged_text),
        }[pick]
        parts.append({"lang": code, "title": title, "text": text})
    response = _html("message.html", lang=langs[0], policy=policy, status_code=status_code, parts=parts)
    if pick == "busy":
        response.headers["Retry-After"] = "60"
    return response


def _local(moment: datetime | None, timezone: str) -> str:
    return moment.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M") if moment else "—"


def _show(
    state: page.PageState, *, token: str, secret: bytes, policy: Policy, cipher: Cipher, error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:  # fmt: skip
    """The page of one callback, as the party sees it now."""
    view, row = state.view, state.page
    lang: Language = "en" if row.language == "en" else "zh-CN"
    tz = row.timezone
    now = utcnow()
    closing = next((a for a in state.actions.values() if a.attempt_id and a.action != "reschedule"), None)
    recorded = [
        {"action": a.action, "when": _local(a.slot if a.action == "reschedule" else a.at, tz)}
        for a in sorted(state.actions.values(), key=lambda a: a.at)
        if a.action in ("confirm", "reschedule")
    ]
    return _html(
        "page.html",
        lang=lang,
        policy=policy,
        status_code=status_code,
        names=labels.names(lang),
        masked_name=cipher.decrypt(row.masked_name_enc),
        caller_code=cipher.decrypt(row.caller_code_enc) if row.caller_code_enc else None,
        purpose=labels.purpose(stage=view.stage, language=lang),
        items=json.loads(view.verification_items),
        due_local=_local(view.due_at, tz),
        timezone=tz,
        closed=state.closed,
        state=view.state,
        channel=view.channel,
        reason=labels.name(labels.REASONS, view.reason_code, lang) if view.reason_code else None,
        when=_local(closing.at if closing else view.closed_at, tz),
        recorded=recorded,
        done_actions=set(state.actions),
        slots=[{"value": s.isoformat(), "label": _local(s, tz)} for s in state.slots(now=now)],
        reasons=page.DECLINE_REASONS,
        max_text=page.MAX_TEXT,
        form_field=links.form_field(secret=secret, token=token),
        action_url=f"/p/{token}",
        error=error,
    )


async def _open(request: Request, token: str, db: Database, policy: Policy) -> page.PageState | None:
    """The page a token opens, or None for an unknown, tampered or expired one (or self-service off)."""
    secret: bytes = request.app.state.runtime.link_secret
    callback_id = links.verify(secret=secret, token=token) if policy.self_service.enabled else None
    if callback_id is None:
        return None
    async with db.uow() as uow:
        return await page.load(uow=uow, callback_id=callback_id)


@router.get("/p/{token}", response_class=HTMLResponse)
async def show_page(request: Request, token: str, db: DatabaseDep, cipher: CipherDep, policy: PolicyDep) -> Response:
    """The party's own page; an unknown, tampered or expired link is a 404 page giving the hotline."""
    state = await _open(request, token, db, policy)
    if state is None:
        return _message(policy=policy, status_code=404, pick="gone")
    secret = request.app.state.runtime.link_secret
    return _show(state, token=token, secret=secret, policy=policy, cipher=cipher)


@router.post("/p/{token}", response_class=HTMLResponse)
async def post_page(request: Request, token: str, db: DatabaseDep, cipher: CipherDep, policy: PolicyDep) -> Response:
    """Take one action from the page's form, once; then show the page again (post, redirect, get)."""
    state = await _open(request, token, db, policy)
    if state is None:
        return _message(policy=policy, status_code=404, pick="gone")
    callback_id = state.view.callback_id
    async with db.uow() as uow:
        posts = await page.note_post(uow=uow, callback_id=callback_id, now=utcnow())
        await uow.commit()
    lang: Language = "en" if state.page.language == "en" else "zh-CN"
    if posts > page.POSTS_PER_MINUTE:
        return _message(policy=policy, status_code=429, pick="busy", lang=lang)
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        return _message(policy=policy, status_code=413, pick="forged", lang=lang)
    fields = parse_qs(raw.decode("utf-8", "replace"))
    secret: bytes = request.app.state.runtime.link_secret
    sent = (fields.get("form") or [""])[0]
    if not hmac.compare_digest(sent, links.form_field(secret=secret, token=token)):
        return _message(policy=policy, status_code=403, pick="forged", lang=lang)
    form = page.PartyForm(
        action=(fields.get("action") or [""])[0],
        items=fields.get("item") or [],
        slot=(fields.get("slot") or [""])[0],
        reason=(fields.get("reason") or [""])[0],
        text=(fields.get("text") or [""])[0],
    )
    try:
        async with db.uow() as uow:
            await page.act(uow=uow, state=state, form=form, policy=policy, cipher=cipher)
            await uow.commit()
    except page.PageError as exc:
        async with db.uow() as uow:
            fresh = await page.load(uow=uow, callback_id=callback_id)
        assert fresh is not None
        return _show(fresh, token=token, secret=secret, policy=policy, cipher=cipher, error=exc.code,
                     status_code=exc.status)  # fmt: skip
    except IntegrityError:
        pass  # the same action posted twice at once: the other post took effect, and the page shows it
    return RedirectResponse(f"/p/{token}", status_code=303)
