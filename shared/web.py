"""App factory: health, readiness, metrics, bearer-key auth with roles, one error shape, request ids."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import Rejected
from shared.limits import BodyLimit, FailedAuthLimit
from shared.metrics import HTTP_REQUESTS, READY
from shared.settings import ApiKey, Settings, parse_key_entries
from shared.tracing import recording

log = structlog.get_logger(__name__)

ROLE_RANK = {"agent": 1, "supervisor": 2, "admin": 3}
ReadinessCheck = Callable[[], Awaitable[str | None]]
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Fingerprints in development, where no index key is configured; production requires HUIFANG_INDEX_KEY.
DEV_FINGERPRINT_SECRET = b"huifang-development-key-fingerprint"


class Principal:
    def __init__(self, role: str, key_id: str, name: str | None = None) -> None:
        self.role = role
        self.key_id = key_id  # a keyed fingerprint of the key, safe to log
        self.name = name  # who acts (the key's principal); None for an older role:key entry

    @property
    def scope(self) -> str:
        """Whose Idempotency-Keys these are: the principal, or the key itself when it names none."""
        return f"principal:{self.name}" if self.name else f"{self.role}:{self.key_id}"


def fingerprint_secret(index_key: str | None) -> bytes:
    """The secret API key fingerprints are keyed with: derived from HUIFANG_INDEX_KEY when set."""
    if not index_key:
        return DEV_FINGERPRINT_SECRET
    return hmac.new(index_key.encode(), b"huifang api key fingerprint", hashlib.sha256).digest()


def key_id(key: str, *, secret: bytes = DEV_FINGERPRINT_SECRET) -> str:
    """A keyed fingerprint of an API key, safe to log: without the secret it cannot be tested against guesses."""
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:16]


class Keyring:
    """The configured API keys, found by a keyed digest so that no lookup compares key bytes directly."""

    def __init__(self, entries: list[ApiKey], *, secret: bytes) -> None:
        self.secret = secret
        self._by_digest = {self._digest(e.key): e for e in entries}
        self._by_id = {key_id(e.key, secret=secret): e for e in entries}

    def _digest(self, key: str) -> bytes:
        return hmac.new(self.secret, b"lookup:" + key.encode(), hashlib.sha256).digest()

    def find(self, key: str) -> ApiKey | None:
        """The entry of a presented key, or None."""
        return self._by_digest.get(self._digest(key))

    def by_id(self, fingerprint: str) -> ApiKey | None:
        """The entry whose fingerprint this is, or None."""
        return self._by_id.get(fingerprint)

    def principal(self, entry: ApiKey) -> Principal:
        return Principal(entry.role, key_id(entry.key, secret=self.secret), entry.principal)


_bearer = HTTPBearer(auto_error=False)


def require_role(role: str) -> Callable[..., Awaitable[Principal]]:
    """Dependency: 401 without a known key, 403 when its role ranks below `role` (admin may do all)."""

    # Async so that FastAPI runs it on the event loop, not in its thread pool (it never blocks).
    async def check(
        request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Principal:
        keyring: Keyring = request.app.state.keyring
        if creds is None or creds.scheme.lower() != "bearer":
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        entry = keyring.find(creds.credentials)
        if entry is None:
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        if ROLE_RANK[entry.role] < ROLE_RANK[role]:
            raise HTTPException(403, f"role {entry.role!r} may not do this; needs {role!r}")
        return keyring.principal(entry)

    return check


AgentAuth = Annotated[Principal, Depends(require_role("agent"))]
SupervisorAuth = Annotated[Principal, Depends(require_role("supervisor"))]


def create_app(
    *,
    service: str,
    api_keys: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    readiness: Callable[[FastAPI], list[ReadinessCheck]] | None = None,
    settings: Settings | None = None,
) -> FastAPI:
    """The service's FastAPI app with the endpoints every service serves."""
    app = FastAPI(title=f"Huifang {service}", version="1", lifespan=lifespan)
    instrument(app)
    index_key = settings.huifang_index_key if settings else None
    secret = fingerprint_secret(index_key.get_secret_value() if index_key else None)
    app.state.keyring = Keyring(parse_key_entries(api_keys), secret=secret)
    app.state.production = settings is not None and settings.huifang_env == "production"
    app.state.service = service

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    async def not_ready() -> list[str]:
        reasons = []
        runtime = getattr(app.state, "runtime", None)
        if readiness is not None:
            checks = readiness(app)
        elif runtime is not None:
            checks = runtime.readiness()
        else:
            READY.labels(service).set(0)
            return ["starting: the service's parts are not up yet"]
        for check in checks:
            try:
                problem = await asyncio.wait_for(check(), timeout=3)
            except Exception as exc:
                problem = f"{type(exc).__name__}"
            if problem:
                reasons.append(problem)
        READY.labels(service).set(0 if reasons else 1)
        return reasons

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        reasons = await not_ready()
        if reasons:
            return JSONResponse({"status": "unavailable", "detail": "; ".join(reasons)}, status_code=503)
        return JSONResponse({"status": "ready", "service": service})

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        # Each scrape re-checks readiness, so `huifang_ready` is current even where nothing probes /readyz.
        await not_ready()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Field paths and messages only: echoing inputs could echo personal data.
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(Rejected)
    async def _rejected(_: Request, exc: Rejected) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    app.add_middleware(RequestIds, service=service)
    # Added last, so they run first: nothing reads a body or checks a key before these limits.
    failures = settings.huifang_auth_failures_per_minute if settings else 10
    app.add_middleware(FailedAuthLimit, failures=failures)
    app.add_middleware(BodyLimit)
    return app


class RequestIds:
    """Each request's id (X-Request-ID, or a new one) bound to its log lines and sent back, and the
    request counted by route template and status. A plain ASGI middleware: Starlette's
    `@app.middleware("http")` runs the app in a task of its own, about 0.5 ms a request."""

    def __init__(self, app: ASGIApp, *, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope.get("headers") or () if name == b"x-request-id"), None)
        request_id = given.decode("latin-1") if given else uuid.uuid4().hex
        status = 500  # what ServerErrorMiddleware answers when the app raises before answering

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, answer)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"  # bounded label values
            route = getattr(scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(self.service, method, route, status).inc()


# Probes and scrapes make no spans; the party's page is left out because its path holds its credential.
UNTRACED_URLS = "/healthz,/readyz,/metrics,/p/"


def instrument(app: FastAPI) -> None:
    """A server span per request (OpenTelemetry's FastAPI instrumentation), skipped while no SDK records spans."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from starlette.middleware.errors import ServerErrorMiddleware

    FastAPIInstrumentor.instrument_app(app, excluded_urls=UNTRACED_URLS, exclude_spans=["receive", "send"])
    traced = app.build_middleware_stack

    def build() -> ASGIApp:
        # The instrumentation wraps the stack as ServerErrorMiddleware(OpenTelemetryMiddleware(...)).
        stack = traced()
        if isinstance(stack, ServerErrorMiddleware) and isinstance(stack.app, OpenTelemetryMiddleware):
            stack.app = WhenRecording(traced=stack.app, plain=stack.app.app)
        return stack

    app.build_middleware_stack = build  # type: ignore[method-assign]


class WhenRecording:
    """OpenTelemetry's middleware only while spans are recorded: without an SDK it costs ~1 ms a request."""

    def __init__(self, *, traced: ASGIApp, plain: ASGIApp) -> None:
        self.traced = traced
        self.plain = plain

    @property
    def app(self) -> ASGIApp:
        # FastAPI walks `.app` down the stack to find this middleware, and then leaves its own tracing off.
        return self.traced

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await (self.traced if recording() else self.plain)(scope, receive, send)


def problem(status: int, detail: Any) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)
