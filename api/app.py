"""The FastAPI application: ``create_app(settings)`` builds it; nothing happens at import.

Startup (lifespan) migrates the database, creates the topics, opens the connection pool, the
Kafka gateway and the NOTIFY listener, and (``embedded_projector``) starts a projector thread.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from api.console import install_console
from api.deps import KeyCache
from api.gateway import TaskGateway
from api.metrics import ApiMetrics
from api.models.tasks import API_PREFIX
from api.monitoring import KafkaMonitor
from api.notifier import EventNotifier
from api.openapi_contract import install_openapi
from api.problems import BodySizeLimit, install_problem_handlers
from api.routes import api_router
from api.routes.health import router as health_router
from api.settings import ApiSettings, load_settings
from producers.workflows import WorkflowProducer
from projection.db.migrate import migrate
from projection.db.pool import AsyncPool
from schemas.topic_admin import ensure_topics

_STOP_TIMEOUT_S = 30.0


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(migrate, settings.database_url)
        await run_in_threadpool(ensure_topics, settings.kafka)
        app.state.pool = AsyncPool(settings.database_url, max_size=settings.db_pool_size)
        app.state.gateway = await run_in_threadpool(
            TaskGateway, settings.kafka, origin_instance=settings.origin_instance,
            origin_zone=settings.origin_zone, ack_timeout_s=settings.submit_timeout_s)
        app.state.monitor = await run_in_threadpool(KafkaMonitor, settings.kafka,
                                                    settings.worker_group_prefix)
        # The workflow requests and commands (api/routes/workflows.py).
        app.state.workflows = await run_in_threadpool(
            WorkflowProducer, settings.kafka, ack_timeout_s=settings.submit_timeout_s)
        app.state.notifier = EventNotifier(settings.database_url,
                                           on_key_revoked=app.state.key_cache.forget)
        app.state.notifier.start()
        stop, thread = threading.Event(), None
        if settings.embedded_projector:
            from projection.projector import run_projector
            from projection.webhooks import webhook_settings_from_env

            thread = threading.Thread(
                target=run_projector, args=(settings.database_url, settings.kafka, stop),
                kwargs={"webhooks": webhook_settings_from_env()}, name="projector", daemon=True)
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                await run_in_threadpool(thread.join, _STOP_TIMEOUT_S)
            await app.state.notifier.stop()
            await run_in_threadpool(app.state.gateway.close)
            await run_in_threadpool(app.state.workflows.close)
            await app.state.pool.close()
            # Drop the Kafka clients now rather than at garbage collection, so they stop
            # talking to the cluster with the app.
            del app.state.gateway, app.state.notifier, app.state.monitor, app.state.workflows

    app = FastAPI(
        title="Compute Server API",
        version="1.0.0",
        summary="Submit AI tasks, follow them live, read their results.",
        lifespan=lifespan,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = ApiMetrics(settings.database_url)
    app.state.key_cache = KeyCache(settings.api_key_cache_s)
    install_problem_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.include_router(api_router, prefix=API_PREFIX)
    app.include_router(health_router)
    install_openapi(app, settings)
    install_console(app)  # /console: the web console (docs/CONSOLE.md)
    return app
