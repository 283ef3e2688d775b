"""Notifier composition root: everything is built in the lifespan, nothing at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import structlog
from fastapi import FastAPI

from services.notifier import api
from services.notifier.delivery import Channels, DeliveryLoop, Retry
from services.notifier.escalation import ESCALATIONS, EscalationLoop
from services.notifier.handlers import HANDLERS
from services.notifier.messages import check_variants
from services.notifier.outbound import DELIVERY, Outbound
from shared.events import CALLBACK_LIFECYCLE, CALLBACK_REFUSED, LOAN_STAGE
from shared.kafka import bind
from shared.policy import load_policy
from shared.runtime import Runtime
from shared.settings import Settings, load_settings
from shared.web import create_app as create_web_app

log = structlog.get_logger(__name__)

SERVICE = "notifier"
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    policy = load_policy(settings.huifang_policy_file)
    check_variants(policy)  # an arm's message names a notice variant that must exist

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = httpx.AsyncClient(timeout=settings.huifang_webhook_timeout_seconds, follow_redirects=False)
        app.state.http = client
        try:
            async with Runtime.running(app, service=SERVICE, settings=settings) as runtime:
                out = Outbound(cipher=runtime.cipher, email_enabled=bool(settings.huifang_smtp_host))
                await runtime.start(
                    migrations=MIGRATIONS,
                    topics=[LOAN_STAGE, CALLBACK_LIFECYCLE, CALLBACK_REFUSED],
                    handlers=bind(HANDLERS, policy=policy, out=out),
                )
                secret = settings.huifang_webhook_secret
                smtp_password = settings.huifang_smtp_password
                if settings.huifang_notify_webhook_url and secret is None:
                    log.warning("notifier.webhook_unsigned", detail="HUIFANG_WEBHOOK_SECRET unset; signing with ''")
                channels = Channels(
                    client=client,
                    webhook_url=settings.huifang_notify_webhook_url,
                    secret=secret.get_secret_value() if secret else "",
                    sms_url=settings.huifang_sms_webhook_url,
                    smtp_host=settings.huifang_smtp_host,
                    smtp_port=settings.huifang_smtp_port,
                    smtp_from=settings.huifang_smtp_from,
                    timeout=settings.huifang_webhook_timeout_seconds,
                    smtp_tls=settings.huifang_smtp_tls,
                    smtp_username=settings.huifang_smtp_username,
                    smtp_password=smtp_password.get_secret_value() if smtp_password else None,
                )
                retry = Retry(
                    max_attempts=settings.huifang_notify_max_attempts,
                    base_seconds=settings.huifang_notify_retry_base_seconds,
                )
                poll = settings.huifang_timer_poll_seconds
                delivery = DeliveryLoop(
                    db=runtime.db, cipher=runtime.cipher, channels=channels, retry=retry, poll_seconds=poll
                )
                runtime.spawn("delivery", delivery.run)
                if runtime.db.dialect == "postgresql":
                    # Notifications committed on another replica wake this one's delivery loop too.
                    runtime.spawn("listen", partial(runtime.db.listen, DELIVERY, ESCALATIONS))
                runtime.spawn("escalations", EscalationLoop(db=runtime.db, policy=policy, poll_seconds=poll).run)
                yield
        finally:
            # The runtime (and the delivery loop using the client) has stopped by now.
            await client.aclose()

    app = create_web_app(
        service=SERVICE,
        api_keys=settings.huifang_api_keys.get_secret_value(),
        settings=settings,
        lifespan=lifespan,
    )
    app.state.policy = policy
    app.include_router(api.router)
    return app
