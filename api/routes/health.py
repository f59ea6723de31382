"""Liveness, readiness and metrics, outside /api/v1. Liveness and readiness need no key (they
say nothing about any tenant); metrics count every tenant's tasks, so they need an operator key."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.deps import GatewayDep, MetricsDep, OperatorDep, PoolDep, SettingsDep
from api.problems import problem_response
from api.routes.common import problem_responses
from state.consumer_watchdog import gave_up, read_reports

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


@router.get("/healthz", response_model=Health, responses=problem_responses(503))
async def healthz(request: Request) -> Health | Response:
    """The process is up (no dependency is checked), unless a consumer running inside it (the
    embedded projector) gave up for lack of progress: then the process needs a restart."""
    dead = gave_up()
    if dead:
        return problem_response(request, 503, "not-ready",
                                f"consumer(s) in this process stopped: {', '.join(dead)}")
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses=problem_responses(503))
async def readyz(request: Request, pool: PoolDep, producer: GatewayDep,
                 settings: SettingsDep) -> Readiness | Response:
    """Ready when PostgreSQL and Kafka both answer within ``ready_timeout_s`` and every
    consumer that reports its health (the projector, the processors: ``COMPUTE_HEALTH_DIR``,
    and the embedded projector) is making progress (docs/RELIABILITY.md, "Self-healing")."""
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
    consumers = await run_in_threadpool(read_reports, settings.health_dir,
                                        settings.consumer_stale_after_s,
                                        settings.consumer_forget_after_s)
    checks.update({f"consumer:{name}": state for name, state in consumers.items()})
    if all(v == "ok" for v in checks.values()):
        return Readiness(status="ready", checks=checks)
    failing = "; ".join(f"{k} {v}" for k, v in checks.items() if v != "ok")
    return problem_response(request, 503, "not-ready", f"not ready: {failing}")


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"},
                       **problem_responses(401, 403)})
async def metrics(operator: OperatorDep, metrics: MetricsDep) -> Response:
    """Prometheus metrics: submits, completions and failures by type and code, processing time,
    of every tenant. Operator keys only (Prometheus: ``authorization: {credentials: <key>}``)."""
    body = await run_in_threadpool(generate_latest, metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
