"""The workflow read model: WorkflowState documents folded into PostgreSQL, and read back.

The processors publish each workflow's latest state (workflows/record.py) to the compacted
``<prefix>.workflows.state`` topic, keyed by workflow id, with a ``version`` that grows by one
per change. Every record is the whole document, so projecting one is a replace guarded by the
version, exactly as for generations (both in projection/db/versioned_upsert.py):

* ``workflows`` holds one row per workflow, written only when the record's version is higher
  than the row's: a duplicate, a replay or an older record never regresses it;
* ``workflow_steps`` of a workflow are deleted and re-inserted from the winning record in the
  same transaction, so they always match the workflow row's version;
* within a batch only the highest version of each workflow is written.

Every column comes from the document (no ``now()``), so ``rebuild`` writes the same rows.
:func:`project_workflow_records` also reports each status change it wrote (for webhooks): the
records of the batch newer than the stored row, in version order, each whose status differs from
the one before it.

The read side (:func:`get_workflow`, :func:`list_workflows`, the monitoring queries) serves the
API; every query is scoped to a tenant, or to every tenant for an operator key (``None``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from projection.db.queries import tenant_where
from projection.db.versioned_upsert import ChildTable, VersionedTable, replace_by_version
from schemas.codec import EventCodec
from schemas.errors import DecodeError
from schemas.workflow_events import WorkflowState

# Advisory-lock hash seed of workflow ids ("wfls"), apart from the tasks' and generations' locks.
_LOCK_SEED = 0x77666C73

WORKFLOW_COLUMNS = (
    "workflow_id", "name", "description", "status", "origin_tenant_id", "origin_instance",
    "origin_zone", "webhook_url", "suppress_subtask_events", "config", "message", "created_at",
    "updated_at", "started_at", "completed_at", "version",
)
STEP_COLUMNS = (
    "workflow_id", "step_id", "position", "task_type", "config", "depends_on", "input_mappings",
    "status", "task_id", "attempt", "params", "result", "error_code", "error_message",
    "started_at", "completed_at",
)
_JSON = frozenset({"config", "depends_on", "input_mappings", "params", "result"})
ENDED_STATUSES = ("COMPLETED", "FAILED", "CANCELLED")


# The guarded replace (projection/db/versioned_upsert.py): ``workflow_steps`` are deleted and
# re-inserted with the workflow row.
_WORKFLOWS = VersionedTable(
    table="workflows", columns=WORKFLOW_COLUMNS, row_attr="workflow",
    children=(ChildTable("workflow_steps", STEP_COLUMNS, "steps"),),
    json_columns=_JSON, lock_seed=_LOCK_SEED)


def decode_workflow_record(codec: EventCodec, value: bytes | None) -> WorkflowState:
    """The WorkflowState of one workflows-state record (Avro, like the task events); DecodeError
    if it is not one (a tombstone, another event, bytes no schema reads)."""
    if value is None:
        raise DecodeError("a tombstone (no value) on the workflows-state topic")
    record = codec.decode(value)
    if not isinstance(record, WorkflowState):
        raise DecodeError(f"expected a WorkflowState on the workflows-state topic, got {type(record).__name__}")
    return record


# --------------------------------------------------------------------------- record -> rows


@dataclass
class WorkflowRows:
    workflow: dict[str, Any]
    steps: list[dict[str, Any]]


def rows_of(record: WorkflowState) -> WorkflowRows:
    """Every row one record stands for (values as this module writes them)."""
    wid = record.workflow_id
    spec = record.spec
    workflow = {
        "workflow_id": wid, "name": spec.name, "description": spec.description,
        "status": record.status.value, "origin_tenant_id": record.origin_tenant_id,
        "origin_instance": spec.origin_instance, "origin_zone": record.origin_zone,
        "webhook_url": record.webhook_url,
        "suppress_subtask_events": spec.suppress_subtask_events, "config": spec.config or {},
        "message": record.message, "created_at": record.created_at,
        "updated_at": record.updated_at, "started_at": record.started_at,
        "completed_at": record.completed_at, "version": record.version,
    }
    states = {s.step_id: s for s in record.steps}
    steps = []
    for position, step in enumerate(spec.steps):
        state = states.get(step.id)
        steps.append({
            "workflow_id": wid, "step_id": step.id, "position": position,
            "task_type": step.task_type.value, "config": step.config or {},
            "depends_on": list(step.depends_on),
            "input_mappings": [m.model_dump(mode="json") for m in step.input_mappings],
            "status": "PENDING" if state is None else state.status.value,
            "task_id": None if state is None else state.task_id,
            "attempt": 0 if state is None else state.attempt,
            "params": None if state is None else state.params,
            "result": None if state is None or state.result is None
            else state.result.model_dump(mode="json"),
            "error_code": None if state is None or state.error_code is None else state.error_code.value,
            "error_message": None if state is None else state.error_message,
            "started_at": None if state is None else state.started_at,
            "completed_at": None if state is None else state.completed_at,
        })
    return WorkflowRows(workflow, steps)


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class WorkflowChange:
    """A workflow's status changed: ``before`` (None: not projected before) to ``after``, by
    ``record`` (the document of that version)."""

    workflow_id: str
    before: str | None
    after: str
    version: int
    record: WorkflowState


@dataclass
class WorkflowBatchResult:
    written: int = 0
    changes: list[WorkflowChange] = field(default_factory=list)  # in version order per workflow


def project_workflow_records(conn: psycopg.Connection, records: Iterable[WorkflowState]
                             ) -> WorkflowBatchResult:
    """Project ``records`` (in topic order) inside one transaction (a savepoint of the caller's,
    if one is open); report the workflows written and their status changes."""
    written, changes = replace_by_version(conn, _WORKFLOWS, records, lambda r: r.workflow_id,
                                          rows_of, WorkflowChange)
    return WorkflowBatchResult(written, changes)


# --------------------------------------------------------------------------- reading (API)

# The summary columns every read returns, with the step counts of the list view.
_SELECT_WORKFLOW = sql.SQL(
    "SELECT {}, (SELECT count(*) FROM workflow_steps s WHERE s.workflow_id = w.workflow_id)"
    " AS steps_total, (SELECT count(*) FROM workflow_steps s WHERE s.workflow_id = w.workflow_id"
    " AND s.status = 'COMPLETED') AS steps_completed FROM workflows w").format(
    sql.SQL(", ").join(sql.SQL("w.{}").format(sql.Identifier(c)) for c in WORKFLOW_COLUMNS))


@dataclass(frozen=True)
class WorkflowFilter:
    status: str | None = None
    name: str | None = None
    origin_instance: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


async def get_workflow(conn: psycopg.AsyncConnection, workflow_id: str, tenant_id: str | None
                       ) -> dict[str, Any] | None:
    """The workflow row with its ``steps`` (in the workflow's order); None when it is not
    ``tenant_id``'s (``None``: any tenant's, operator keys)."""
    where, args = sql.SQL(" WHERE w.workflow_id = %s"), [workflow_id]
    if tenant_id is not None:
        where += sql.SQL(" AND w.origin_tenant_id = %s")
        args.append(tenant_id)
    cur = await conn.execute(_SELECT_WORKFLOW + where, args)
    row = await cur.fetchone()
    if row is None:
        return None
    cur = await conn.execute(
        f"SELECT {', '.join(STEP_COLUMNS)} FROM workflow_steps WHERE workflow_id = %s"
        " ORDER BY position", (workflow_id,))
    return {**row, "steps": await cur.fetchall()}


async def list_workflows(conn: psycopg.AsyncConnection, tenant_id: str | None, f: WorkflowFilter, *,
                         page: int, page_size: int, sort_order: str = "desc"
                         ) -> tuple[list[dict[str, Any]], int]:
    """One page of the workflows in scope (newest first unless ``sort_order`` is "asc") and the
    total count of matches."""
    clauses, args = tenant_where(tenant_id, f, ("status", "name", "origin_instance"))
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses)
    direction = sql.SQL("ASC" if sort_order == "asc" else "DESC")
    cur = await conn.execute(
        sql.SQL("SELECT * FROM ({}) AS w").format(_SELECT_WORKFLOW) + where
        + sql.SQL(" ORDER BY created_at {}, workflow_id {} LIMIT %s OFFSET %s").format(direction, direction),
        [*args, page_size, (page - 1) * page_size])
    rows = await cur.fetchall()
    cur = await conn.execute(sql.SQL("SELECT count(*) AS n FROM workflows") + where, args)
    total = (await cur.fetchone())["n"]
    return rows, total


def _scope(tenant_id: str | None, alias: str = "w") -> tuple[sql.Composable, list[Any]]:
    if tenant_id is None:
        return sql.SQL("TRUE"), []
    return sql.SQL("{}.origin_tenant_id = %s").format(sql.Identifier(alias)), [tenant_id]


async def active_workflows(conn: psycopg.AsyncConnection, tenant_id: str | None, limit: int = 100
                           ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The workflows not ended (newest change first, at most ``limit``), each with its steps
    counted by status; and every workflow in scope counted by status."""
    scope, args = _scope(tenant_id)
    cur = await conn.execute(
        sql.SQL("SELECT w.workflow_id, w.name, w.status, w.origin_tenant_id, w.created_at,"
                " w.updated_at, coalesce((SELECT jsonb_object_agg(status, n) FROM (SELECT"
                " s.status, count(*) AS n FROM workflow_steps s WHERE s.workflow_id = w.workflow_id"
                " GROUP BY s.status) c), '{{}}'::jsonb) AS steps FROM workflows w WHERE {}"
                " AND w.status <> ALL(%s) ORDER BY w.updated_at DESC, w.workflow_id LIMIT %s"
                ).format(scope), [*args, list(ENDED_STATUSES), limit])
    active = await cur.fetchall()
    cur = await conn.execute(sql.SQL("SELECT status, count(*) AS n FROM workflows w WHERE {}"
                                     " GROUP BY status").format(scope), args)
    return active, {r["status"]: r["n"] for r in await cur.fetchall()}


async def workflow_stats(conn: psycopg.AsyncConnection, tenant_id: str | None) -> dict[str, Any]:
    """Counts by status, run-time percentiles of ended workflows (ms), steps by status and type."""
    scope, args = _scope(tenant_id)
    cur = await conn.execute(sql.SQL("SELECT status, count(*) AS n FROM workflows w WHERE {}"
                                     " GROUP BY status").format(scope), args)
    by_status = {r["status"]: r["n"] for r in await cur.fetchall()}
    cur = await conn.execute(sql.SQL(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,"
        " percentile_cont(0.95) WITHIN GROUP (ORDER BY ms) AS p95 FROM (SELECT extract(epoch FROM"
        " w.completed_at - coalesce(w.started_at, w.created_at)) * 1000 AS ms FROM workflows w"
        " WHERE {} AND w.completed_at IS NOT NULL) d").format(scope), args)
    durations = await cur.fetchone()
    cur = await conn.execute(sql.SQL(
        "SELECT s.status, s.task_type, count(*) AS n FROM workflow_steps s JOIN workflows w"
        " USING (workflow_id) WHERE {} GROUP BY s.status, s.task_type").format(scope), args)
    steps_by_status: dict[str, int] = {}
    steps_by_type: dict[str, int] = {}
    for r in await cur.fetchall():
        steps_by_status[r["status"]] = steps_by_status.get(r["status"], 0) + r["n"]
        steps_by_type[r["task_type"]] = steps_by_type.get(r["task_type"], 0) + r["n"]
    return {"by_status": by_status, "p50_ms": durations["p50"], "p95_ms": durations["p95"],
            "steps_by_status": steps_by_status, "steps_by_task_type": steps_by_type}
