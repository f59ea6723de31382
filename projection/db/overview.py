"""Read-model queries behind GET /monitoring/overview and GET /tasks/{id}/webhook-deliveries:
the last hour per task type, the worker running each task, a task's webhook deliveries.

``tenant_id`` None means every tenant: only the overview of an operator key passes it."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

_HOUR = "now() - interval '1 hour'"
_LAST_HOUR = sql.SQL(
    "SELECT task_type,"
    " count(*) FILTER (WHERE status IN ('PENDING', 'QUEUED')) AS queued,"
    " count(*) FILTER (WHERE status = 'PROCESSING') AS running,"
    f" count(*) FILTER (WHERE status = 'COMPLETED' AND completed_at > {_HOUR}) AS completed,"
    f" count(*) FILTER (WHERE status = 'FAILED' AND updated_at > {_HOUR}) AS failed,"
    " percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) FILTER (WHERE status = 'COMPLETED'"
    f"   AND completed_at > {_HOUR}) AS p50,"
    " percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) FILTER (WHERE status = 'COMPLETED'"
    f"   AND completed_at > {_HOUR}) AS p95"
    " FROM tasks{} GROUP BY 1 ORDER BY 1")


async def last_hour(conn: psycopg.AsyncConnection, tenant_id: str | None) -> list[dict[str, Any]]:
    """Per task type with any task: queued and running now; completed, failed and p50/p95
    duration (ms) of the tasks that ended in the last hour."""
    where = sql.SQL("") if tenant_id is None else sql.SQL(" WHERE origin_tenant_id = %s")
    cur = await conn.execute(_LAST_HOUR.format(where), () if tenant_id is None else (tenant_id,))
    return [{"task_type": r["task_type"],
             **{k: None if r[k] is None else round(float(r[k]))
                for k in ("queued", "running", "completed", "failed", "p50", "p95")}}
            for r in await cur.fetchall()]


async def running_by_worker(conn: psycopg.AsyncConnection, tenant_id: str | None
                            ) -> list[dict[str, Any]]:
    """The tasks still PROCESSING, each with the worker that reported it PROCESSING last."""
    tenant = sql.SQL("") if tenant_id is None else sql.SQL(" AND t.origin_tenant_id = %s")
    cur = await conn.execute(sql.SQL(
        "SELECT DISTINCT ON (e.task_id) e.payload->>'worker_id' AS worker_id, e.task_id::text,"
        " t.task_type, t.origin_tenant_id AS tenant_id, t.started_at"
        " FROM task_events e JOIN tasks t ON t.task_id = e.task_id"
        " WHERE t.status = 'PROCESSING' AND e.status = 'PROCESSING'{}"
        " ORDER BY e.task_id, e.seq DESC").format(tenant), () if tenant_id is None else (tenant_id,))
    return [r for r in await cur.fetchall() if r["worker_id"]]


async def webhook_deliveries(conn: psycopg.AsyncConnection, task_id: str, limit: int = 100
                             ) -> list[dict[str, Any]]:
    """The task's webhook deliveries, oldest first (the caller checked the task is its own)."""
    cur = await conn.execute(
        "SELECT outbox_id, event_id::text, url, state, attempts, next_attempt_at,"
        " last_status_code, last_error, created_at, updated_at FROM webhook_outbox"
        " WHERE subject_kind = 'task' AND subject_id = %s ORDER BY outbox_id LIMIT %s",
        (task_id, limit))
    return list(await cur.fetchall())
