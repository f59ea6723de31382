"""Liveness, readiness and metrics, outside /api/v1. Liveness and readiness need no key (they
say nothing about any tenant); metrics count every tenant's tasks, so they need an operator key."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from state.api.deps import MetricsDep, OperatorDep, PoolDep, ProducerDep, SettingsDep
from state.api.problems import problem_response
from state.api.routes.common import problem_responses

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up (no dependency is checked)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses=problem_responses(503))
async def readyz(request: Request, pool: PoolDep, producer: ProducerDep,
                 settings: SettingsDep) -> Readiness | Response:
    """Ready when PostgreSQL and Kafka both answer within ``ready_timeout_s``."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(settings.ready_timeout_s):
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:  # any failure means not ready
        checks["postgres"] = f"unavailable: {type(exc).__name__}"
    problem = await run_in_threadpool(producer.ping, settings.ready_timeout_s)
    checks["kafka"] = "ok" if problem is None else "unavailable"
    if all(v == "ok" for v in checks.values()):
        return Readiness(status="ready", checks=checks)
    failing = ", ".join(k for k, v in checks.items() if v != "ok")
    return problem_response(request, 503, "not-ready", f"not ready: {failing} unavailable")


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"},
                       **problem_responses(401, 403)})
async def metrics(operator: OperatorDep, metrics: MetricsDep) -> Response:
    """Prometheus metrics: submits, completions and failures by type and code, processing time,
    of every tenant. Operator keys only (Prometheus: ``authorization: {credentials: <key>}``)."""
    body = await run_in_threadpool(generate_latest, metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
