"""Notifier composition root: everything is built in the lifespan, nothing at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI

from services.notifier import api
from services.notifier.delivery import DeliveryLoop
from services.notifier.handlers import handlers
from shared.events import CALLBACK_REFUSED, LOAN_STAGE
from shared.policy import load_policy
from shared.runtime import Runtime
from shared.settings import Settings, load_settings
from shared.web import create_app as create_web_app

SERVICE = "notifier"
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    policy = load_policy(settings.huifang_policy_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = httpx.AsyncClient(timeout=settings.huifang_webhook_timeout_seconds, follow_redirects=False)
        app.state.http = client
        try:
            async with Runtime.running(app, service=SERVICE, settings=settings) as runtime:
                await runtime.start(
                    migrations=MIGRATIONS,
                    topics=[LOAN_STAGE, CALLBACK_REFUSED],
                    handlers=handlers(policy, runtime.cipher),
                )
                secret = settings.huifang_webhook_secret
                delivery = DeliveryLoop(
                    db=runtime.db,
                    client=client,
                    url=settings.huifang_notify_webhook_url,
                    secret=secret.get_secret_value() if secret else None,
                    poll_seconds=settings.huifang_timer_poll_seconds,
                )
                runtime.spawn("delivery", delivery.run)
                yield
        finally:
            # The runtime (and the delivery loop using the client) has stopped by now.
            await client.aclose()

    app = create_web_app(
        service=SERVICE,
        api_keys=settings.huifang_api_keys.get_secret_value(),
        lifespan=lifespan,
    )
    app.state.policy = policy
    app.include_router(api.router)
    return app
