"""The read side of the model, for the API: one task, a filtered page of tasks, task events.

Every query is scoped to a tenant: a task of another tenant does not exist for the caller. An
operator key's reads pass ``tenant_id=None`` (every tenant): api/routes/overview.py.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

import psycopg
from psycopg import sql

# Columns a list may be sorted by; anything else is refused before it reaches SQL.
SORTABLE = ("created_at", "updated_at", "completed_at", "status", "task_type", "progress",
            "duration_ms", "attempt")
TASK_COLUMNS = (
    "task_id", "task_type", "status", "attempt", "progress", "message", "params", "result",
    "error_code", "error_message", "origin_instance", "origin_zone", "origin_tenant_id",
    "provider_type", "webhook_url", "generation_id", "created_at", "queued_at", "started_at",
    "completed_at", "duration_ms", "updated_at", "version", "event_seq", "origin_version", "entity_id",
)
_SELECT = sql.SQL("SELECT {} FROM tasks").format(sql.SQL(", ").join(map(sql.Identifier, TASK_COLUMNS)))
_TIMESTAMP_COLUMNS = ("created_at", "queued_at", "started_at", "completed_at", "updated_at")
_UUID_COLUMNS = ("task_id", "generation_id")


def task_row_from_json(doc: str, tz: tzinfo) -> dict[str, Any]:
    """A row of TASK_COLUMNS as PostgreSQL's ``row_to_json`` wrote it (the projector's
    notifications, projection.db.projection), typed as :func:`get_task` returns it to a session whose
    time zone is ``tz``: the same row gives the same answer either way."""
    row = json.loads(doc)
    for column in _TIMESTAMP_COLUMNS:
        if row[column] is not None:
            row[column] = datetime.fromisoformat(row[column]).astimezone(tz)
    for column in _UUID_COLUMNS:
        if row[column] is not None:
            row[column] = uuid.UUID(row[column])
    row["progress"] = float(row["progress"])  # JSON writes 1.0 as 1
    return row


@dataclass(frozen=True)
class TaskFilter:
    status: str | None = None
    task_type: str | None = None
    provider_type: str | None = None
    origin_instance: str | None = None
    origin_zone: str | None = None
    origin_tenant_id: str | None = None
    entity_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    search: str | None = None  # task id prefix


async def get_task(conn: psycopg.AsyncConnection, task_id: str, tenant_id: str | None) -> dict[str, Any] | None:
    """The task, if it is ``tenant_id``'s; ``None`` reads any tenant's (operator keys only)."""
    if tenant_id is None:
        cur = await conn.execute(_SELECT + sql.SQL(" WHERE task_id = %s"), (task_id,))
    else:
        cur = await conn.execute(
            _SELECT + sql.SQL(" WHERE task_id = %s AND origin_tenant_id = %s"), (task_id, tenant_id)
        )
    return await cur.fetchone()


def tenant_where(tenant_id: str | None, f: Any, columns: tuple[str, ...]) -> tuple[list[sql.Composable], list[Any]]:
    """The WHERE clauses (and their arguments) of a tenant's list (``None``: every tenant's, for
    operator keys): each of ``columns`` that ``f`` sets must be equal, ``f.created_after`` <=
    created_at < ``f.created_before``."""
    clauses: list[sql.Composable] = [sql.SQL("TRUE")]
    args: list[Any] = []
    if tenant_id is not None:
        clauses, args = [sql.SQL("origin_tenant_id = %s")], [tenant_id]
    for column in columns:
        value = getattr(f, column)
        if value is not None:
            clauses.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            args.append(value)
    if f.created_after is not None:
        clauses.append(sql.SQL("created_at >= %s"))
        args.append(f.created_after)
    if f.created_before is not None:
        clauses.append(sql.SQL("created_at < %s"))
        args.append(f.created_before)
    return clauses, args


def _where(tenant_id: str | None, f: TaskFilter) -> tuple[sql.Composable, list[Any]]:
    clauses, args = tenant_where(tenant_id, f, ("status", "task_type", "provider_type", "origin_instance",
                                                "origin_zone", "origin_tenant_id", "entity_id"))
    if f.search:
        escaped = f.search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        clauses.append(sql.SQL("task_id::text LIKE %s"))
        args.append(escaped + "%")
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses), args


async def list_tasks(
    conn: psycopg.AsyncConnection, tenant_id: str | None, f: TaskFilter, *, page: int, page_size: int,
    sort_by: str = "created_at", sort_order: str = "desc",
) -> tuple[list[dict[str, Any]], int]:
    """One page of the tenant's tasks matching ``f`` and the total count."""
    if sort_by not in SORTABLE or sort_order not in ("asc", "desc"):
        raise ValueError(f"cannot sort by {sort_by} {sort_order}")
    where, args = _where(tenant_id, f)
    direction = sql.SQL("ASC" if sort_order == "asc" else "DESC")
    nulls = sql.SQL("NULLS LAST" if sort_order == "desc" else "NULLS FIRST")
    query = (_SELECT + where + sql.SQL(" ORDER BY {} {} {}, task_id {} LIMIT %s OFFSET %s").format(
        sql.Identifier(sort_by), direction, nulls, direction))
    cur = await conn.execute(query, [*args, page_size, (page - 1) * page_size])
    rows = await cur.fetchall()
    cur = await conn.execute(sql.SQL("SELECT count(*) AS n FROM tasks") + where, args)
    total = (await cur.fetchone())["n"]
    return rows, total


async def events_after(conn: psycopg.AsyncConnection, task_id: str, after_seq: int,
                       limit: int = 500) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT seq, event_id, attempt, status, progress, occurred_at, payload FROM task_events"
        " WHERE task_id = %s AND seq > %s ORDER BY seq LIMIT %s", (task_id, after_seq, limit),
    )
    return await cur.fetchall()
