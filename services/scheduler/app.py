"""Scheduler composition root: everything is built in the lifespan, nothing at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from services.scheduler import api
from services.scheduler.handlers import HANDLERS
from services.scheduler.notices import Notices, PageLinks
from services.scheduler.timers import TimerLoop
from shared.events import CALLBACK_OUTCOME, LOAN_STAGE
from shared.kafka import bind
from shared.policy import load_policy
from shared.runtime import Runtime
from shared.settings import Settings, load_settings
from shared.web import create_app as create_web_app

SERVICE = "scheduler"
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    policy = load_policy(settings.huifang_policy_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Runtime.running(app, service=SERVICE, settings=settings) as runtime:
            links = PageLinks(secret=runtime.link_secret, public_url=settings.huifang_public_url)
            notices = Notices(cipher=runtime.cipher, policy=policy, links=links)
            handlers = bind(HANDLERS, policy=policy, cipher=runtime.cipher, notices=notices)
            await runtime.start(migrations=MIGRATIONS, topics=[LOAN_STAGE, CALLBACK_OUTCOME], handlers=handlers)
            timers = TimerLoop(
                db=runtime.db, cipher=runtime.cipher, poll_seconds=settings.huifang_timer_poll_seconds, policy=policy,
                links=links,
            )  # fmt: skip
            runtime.spawn("timers", timers.run)
            yield

    app = create_web_app(
        service=SERVICE,
        api_keys=settings.huifang_api_keys.get_secret_value(),
        settings=settings,
        lifespan=lifespan,
    )
    app.state.policy = policy
    app.include_router(api.router)
    return app
