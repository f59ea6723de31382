"""The versioned API router: every resource's router, mounted under /api/v1 by the app."""

from __future__ import annotations

from fastapi import APIRouter

from api.routes import catalog, events, generations, monitoring, overview, tasks, workflows

api_router = APIRouter()
api_router.include_router(tasks.router)
api_router.include_router(events.router)
api_router.include_router(monitoring.router)
api_router.include_router(generations.router)
api_router.include_router(catalog.router)
api_router.include_router(overview.router)
api_router.include_router(workflows.router)
api_router.include_router(workflows.monitoring_router)
