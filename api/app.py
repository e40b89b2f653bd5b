"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

import anyio.to_thread
from fastapi import FastAPI

from api.docs_ui import install_docs
from api.errors import install_error_handlers
from api.metrics import install_metrics
from api.middleware import BodySizeLimit, InFlightLimit
from api.openapi import install_openapi
from api.routes import health, jobs
from api.ui import routes as ui
from service.broker import Broker, make_broker
from service.db.session import Database
from service.settings import Settings
from service.store import make_store

PROBES = frozenset({"/healthz", "/readyz"})  # always answered, however busy the process is


class BackgroundService(Protocol):
    """Something that runs beside the API for its lifetime (the embedded worker)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def create_app(
    settings: Settings | None = None,
    *,
    broker: Broker | None = None,
    services: Sequence[BackgroundService] = (),
) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # sync handlers and dependencies run on this many threads; the database pool has more connections
        # than that (settings.db_pool_size), so a thread never waits for a connection held by a queued request
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        for service in services:
            service.start()
        try:
            yield
        finally:
            for service in reversed(services):
                service.stop()
            app.state.broker.close()
            if getattr(app.state, "limits", None) is not None:
                app.state.limits.close()
            app.state.db.dispose()

    app = FastAPI(
        title="twossp",
        version="0.1.0",
        summary="Structured pruning of LLMs with 2SSP, as a batch service",
        lifespan=lifespan,
        docs_url=None,  # install_docs serves /docs from local assets
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.db = Database(settings)
    app.state.store = make_store(settings)
    app.state.broker = broker or make_broker(settings.broker_url, settings.celery_queue)
    install_error_handlers(app)
    install_openapi(app)
    install_docs(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(ui.router)
    ui.mount_static(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(  # inside the latency middleware, so shed requests are measured too
        InFlightLimit, limit=settings.max_in_flight_requests, retry_after_s=settings.retry_after_s,
        exempt=PROBES,
    )
    install_metrics(app, app.state.db)
    return app
