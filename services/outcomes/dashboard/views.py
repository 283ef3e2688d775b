"""Dashboard routes: login with a supervisor key, the page (which refreshes itself), logout."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import IntegrityError

from services.outcomes.dashboard import session
from services.outcomes.dashboard.board import WINDOWS, bilingual, load_board
from shared.db import utcnow
from shared.labels import ROLES
from shared.web import ROLE_RANK

HERE = Path(__file__).parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/dashboard", tags=["dashboard"], include_in_schema=False)
# Everything the page loads is its own: no CDN, no inline script.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
REPORTING_TZ = "Asia/Shanghai"
MAX_FORM_BYTES = 4096


def _local(moment: datetime | None) -> str:
    """A time as the bank's staff read it."""
    return moment.astimezone(ZoneInfo(REPORTING_TZ)).strftime("%m-%d %H:%M") if moment else "—"


templates.env.filters["local"] = _local
templates.env.filters["role"] = partial(bilingual, ROLES)


def _page(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    """A rendered template with the dashboard's security headers."""
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def _login(
    request: Request, error: str | None = None, status_code: int = 200, after: str = "/dashboard"
) -> HTMLResponse:
    return _page(request, "login.html", {"error": error, "next": after}, status_code)


def _after_login(target: str | None) -> str:
    """Where to go after logging in: a dashboard page, never another site."""
    if target and target.startswith("/dashboard") and "//" not in target and "\\" not in target:
        return target
    return "/dashboard"


async def _current(request: Request) -> session.Session | None:
    """The request's dashboard session: signed, unexpired, of a configured key, and not logged out."""
    found = session.verify(keyring=request.app.state.keyring, cookie=request.cookies.get(session.COOKIE))
    if found is None:
        return None
    async with request.app.state.runtime.db.uow() as uow:
        return None if await session.revoked(uow=uow, session=found) else found


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str | None = None) -> Response:
    """The login form (or straight to the dashboard with a valid session)."""
    if await _current(request):
        return RedirectResponse(_after_login(next), status_code=303)
    return _login(request, after=_after_login(next))


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the supervisor key from the form and start a session."""
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        return _login(request, "The form is too large.", 413)
    form = parse_qs(raw.decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0].strip()
    after = _after_login((form.get("next") or [""])[0])
    keyring = request.app.state.keyring
    entry = keyring.find(key)
    if entry is None:
        return _login(request, "Unknown key.", 401, after)
    if ROLE_RANK[entry.role] < ROLE_RANK["supervisor"]:
        return _login(request, "The dashboard needs a supervisor or admin key.", 403, after)
    response = RedirectResponse(after, status_code=303)
    response.set_cookie(
        session.COOKIE,
        session.sign(keyring=keyring, key=entry.key, role=entry.role),
        max_age=session.LIFETIME_S,
        path="/dashboard",
        httponly=True,
        samesite="strict",
        # Behind a TLS proxy the request scheme may read http: production always says Secure.
        secure=request.app.state.production or request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session, here and on every replica: the cookie alone no longer works."""
    found = session.verify(keyring=request.app.state.keyring, cookie=request.cookies.get(session.COOKIE))
    if found is not None:
        try:
            async with request.app.state.runtime.db.uow() as uow:
                await session.revoke(uow=uow, session=found)
                await uow.commit()
        except IntegrityError:
            pass  # a concurrent logout of the same session revoked it first
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(session.COOKIE, path="/dashboard", httponly=True, samesite="strict")
    return response


@router.get("", response_class=HTMLResponse)
async def dashboard(
    request: Request,
    window: Annotated[str, Query(pattern="^(10m|1h|24h|30d)$")] = "24h",
    refresh: Annotated[int, Query(ge=2, le=3600, description="seconds between refreshes")] = 15,
) -> Response:
    """The dashboard page: refusal charts, open and overdue callbacks, open escalations."""
    who = await _current(request)
    if who is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/dashboard/login?next={quote(target, safe='')}", status_code=303)
    now = utcnow()
    async with request.app.state.runtime.db.uow() as uow:
        board = await load_board(uow=uow, window=window, now=now, tz=REPORTING_TZ, policy=request.app.state.policy)
    context = {
        "board": board,
        "charts": board.charts(REPORTING_TZ),
        "windows": list(WINDOWS),
        "who": who,
        "now": now,
        "tz": REPORTING_TZ,
        "refresh_s": refresh,
        "demo": request.app.state.demo,
    }
    return _page(request, "dashboard.html", context)
