"""Outcomes composition root: everything is built in the lifespan, nothing at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from services.outcomes import api
from services.outcomes.dashboard import views as dashboard
from services.outcomes.handlers import HANDLERS
from services.outcomes.party import views as party
from services.outcomes.stats import install_sqlite_functions
from shared.events import CALLBACK_LIFECYCLE, NOTIFICATION
from shared.kafka import bind
from shared.policy import load_policy
from shared.runtime import Runtime
from shared.settings import Settings, load_settings
from shared.web import create_app as create_web_app

SERVICE = "outcomes"
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    policy = load_policy(settings.huifang_policy_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Runtime.running(app, service=SERVICE, settings=settings) as runtime:
            if runtime.db.dialect == "sqlite":
                install_sqlite_functions(runtime.db.engine)
            topics = [CALLBACK_LIFECYCLE, NOTIFICATION]
            await runtime.start(migrations=MIGRATIONS, topics=topics, handlers=bind(HANDLERS, cipher=runtime.cipher))
            yield

    app = create_web_app(
        service=SERVICE,
        api_keys=settings.huifang_api_keys.get_secret_value(),
        settings=settings,
        lifespan=lifespan,
    )
    app.state.policy = policy
    app.state.demo = settings.huifang_demo
    app.include_router(api.router)
    app.include_router(party.router)
    app.include_router(dashboard.router)
    app.mount("/dashboard/static", StaticFiles(directory=dashboard.STATIC), name="dashboard-static")
    return app
