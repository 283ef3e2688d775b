"""App factory: health, readiness, metrics, bearer-key auth with roles, one error shape, request ids."""

from __future__ import annotations

import asyncio
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

from shared.errors import Rejected
from shared.metrics import HTTP_REQUESTS
from shared.settings import parse_api_keys

log = structlog.get_logger(__name__)

ROLE_RANK = {"agent": 1, "supervisor": 2, "admin": 3}
ReadinessCheck = Callable[[], Awaitable[str | None]]


class Principal:
    def __init__(self, role: str, key_id: str) -> None:
        self.role = role
        self.key_id = key_id  # a short fingerprint of the key, safe to log


def key_id(key: str) -> str:
    """A short fingerprint of an API key, safe to log and to scope its Idempotency-Keys by."""
    return uuid.uuid5(uuid.NAMESPACE_OID, key).hex[:8]


_bearer = HTTPBearer(auto_error=False)


def require_role(role: str) -> Callable[..., Principal]:
    """Dependency: 401 without a known key, 403 when its role ranks below `role` (admin may do all)."""

    def check(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
        keys: dict[str, str] = request.app.state.api_keys
        if creds is None or creds.scheme.lower() != "bearer":
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        granted = keys.get(creds.credentials)
        if granted is None:
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        if ROLE_RANK[granted] < ROLE_RANK[role]:
            raise HTTPException(403, f"role {granted!r} may not do this; needs {role!r}")
        return Principal(granted, key_id(creds.credentials))

    return check


AgentAuth = Annotated[Principal, Depends(require_role("agent"))]
SupervisorAuth = Annotated[Principal, Depends(require_role("supervisor"))]


def create_app(
    *,
    service: str,
    api_keys: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    readiness: Callable[[FastAPI], list[ReadinessCheck]] | None = None,
) -> FastAPI:
    """The service's FastAPI app with the endpoints every service serves."""
    app = FastAPI(title=f"Huifang {service}", version="1", lifespan=lifespan)
    app.state.api_keys = parse_api_keys(api_keys)
    app.state.service = service

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        reasons = []
        checks = readiness(app) if readiness else app.state.runtime.readiness()
        for check in checks:
            try:
                problem = await asyncio.wait_for(check(), timeout=3)
            except Exception as exc:
                problem = f"{type(exc).__name__}"
            if problem:
                reasons.append(problem)
        if reasons:
            return JSONResponse({"status": "unavailable", "detail": "; ".join(reasons)}, status_code=503)
        return JSONResponse({"status": "ready", "service": service})

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
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

    @app.middleware("http")
    async def _request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            response = await call_next(request)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")
        route = request.scope.get("route")
        HTTP_REQUESTS.labels(service, request.method, getattr(route, "path", "unmatched"), response.status_code).inc()
        response.headers["x-request-id"] = request_id
        return response

    return app


def problem(status: int, detail: Any) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)
