"""The generation read model: GenerationRecord documents folded into PostgreSQL, and read back.

The processors publish each generation's latest :class:`~generations.record.GenerationRecord`
(JSON, ``encode_record``) to the compacted ``<prefix>.generations.state`` topic, keyed by
generation id, with a ``version`` that grows by one per change. Every record is the *whole*
document, so projecting one is a replace, guarded by the version (the code, shared with the
workflows' projection, is projection/db/versioned_upsert.py):

* ``generations`` holds one row per generation; a record is written only when its version is
  higher than the row's (``WHERE generations.version < EXCLUDED.version``): a duplicate, a replay
  or an older record never regresses a row, whoever writes;
* ``predictions``, ``orchestrated_shots`` (+ ``shot_attempts``, every attempt) and ``refines``
  of a generation are deleted and re-inserted from the winning record in the same transaction,
  so they always match the generation row's version;
* within a batch only the highest version of each generation is written (on a tie, the first
  seen: the same rule as "stored row wins a tie" across batches).

Every column comes from the document (no ``now()``), so ``rebuild`` — the same topic replayed —
writes the same rows. Per-generation advisory locks (sorted) keep two projectors of one group,
during a rebalance, from interleaving.

:func:`project_generation_records` also reports the status changes it wrote (for webhooks): for
each generation written, the records of the batch newer than the stored row are walked in version
order and each one whose status differs from the one before it (the stored row's, or none for a
generation not seen yet) is a :class:`GenerationChange`. So a generation first projected RUNNING
and later COMPLETED reports two changes, even when both records arrive in one batch; a duplicate,
an older record or a newer version of the same status reports none. The caller's transaction
(the projector's batch) makes what it does with them commit with the rows.

The read side (:func:`get_generation`, :func:`list_generations`) serves the API; every query is
scoped to a tenant.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from generations.record import (
    GENERATION_RECORD_CONTENT_TYPE,
    GenerationRecord,
    PredictionRecord,
    decode_record,
)
from projection.db.projection import BatchResult
from projection.db.queries import tenant_where
from projection.db.versioned_upsert import ChildTable, VersionedTable, replace_by_version
from schemas.errors import DecodeError

# Advisory-lock hash seed of generation ids ("gens"), apart from the tasks' locks.
_LOCK_SEED = 0x67656E73

GENERATION_COLUMNS = (
    "generation_id", "strategy", "generation_type", "batch_size", "settings", "status",
    "origin_tenant_id", "origin_instance", "origin_zone", "webhook_url", "prompt",
    "prompt_task_id", "message", "created_at", "updated_at", "completed_at", "version",
)
PREDICTION_COLUMNS = (
    "generation_id", "prediction_index", "task_id", "task_ids", "shot_id", "status", "result",
    "error_code", "error_message", "follow_up_task_id",
)
SHOT_COLUMNS = (
    "shot_id", "generation_id", "prediction_index", "max_attempts", "min_confidence_score",
    "evaluation_provider", "accepted_task_id", "accepted_attempt", "decision", "done",
    "created_at", "updated_at",
)
ATTEMPT_COLUMNS = (
    "shot_id", "attempt", "task_id", "task_type", "params", "status", "score", "reasons",
    "decision", "error_code", "result",
)
REFINE_COLUMNS = ("refine_id", "generation_id", "task_id", "task_ids", "params", "created_at")
_JSON = frozenset({"settings", "task_ids", "result", "params", "reasons"})


# The guarded replace (projection/db/versioned_upsert.py). Children in insert order; a shot's
# attempts go with its ``orchestrated_shots`` row (ON DELETE CASCADE), so they are not deleted
# by generation id.
_GENERATIONS = VersionedTable(
    table="generations", columns=GENERATION_COLUMNS, row_attr="generation",
    children=(ChildTable("predictions", PREDICTION_COLUMNS, "predictions"),
              ChildTable("orchestrated_shots", SHOT_COLUMNS, "shots"),
              ChildTable("shot_attempts", ATTEMPT_COLUMNS, "attempts", cleared=False),
              ChildTable("refines", REFINE_COLUMNS, "refines")),
    json_columns=_JSON, lock_seed=_LOCK_SEED)


# --------------------------------------------------------------------------- decoding


def decode_generation_record(value: bytes | None, headers: Iterable[tuple[str, bytes]] | None = None
                             ) -> GenerationRecord:
    """The GenerationRecord of one generations-state record; DecodeError if it is not one (a
    tombstone, another content type, JSON that does not validate)."""
    if value is None:
        raise DecodeError("a tombstone (no value) on the generations-state topic")
    content_type = dict(headers or ()).get("content-type")
    if content_type is not None and content_type != GENERATION_RECORD_CONTENT_TYPE:
        raise DecodeError(f"content-type {content_type[:100]!r} is not a GenerationRecord")
    try:
        return decode_record(value)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise DecodeError(f"not a GenerationRecord document: {str(exc)[:500]}") from exc


# --------------------------------------------------------------------------- record -> rows


@dataclass
class GenerationRows:
    generation: dict[str, Any]
    predictions: list[dict[str, Any]]
    shots: list[dict[str, Any]]
    attempts: list[dict[str, Any]]
    refines: list[dict[str, Any]]


def rows_of(record: GenerationRecord) -> GenerationRows:
    """Every row one record stands for (values as this module writes them)."""
    request = record.plan.request
    gid = record.generation_id
    generation = {
        "generation_id": gid, "strategy": request.strategy.value,
        "generation_type": request.generation_type.value,
        "batch_size": len(record.predictions) or getattr(request, "batch_size", 1),
        "settings": request.model_dump(mode="json", exclude={"strategy"}),
        "status": record.status.value, "origin_tenant_id": record.origin_tenant_id,
        "origin_instance": record.origin_instance, "origin_zone": record.origin_zone,
        "webhook_url": record.webhook_url, "prompt": record.prompt or record.plan.prompt,
        "prompt_task_id": record.prompt_task_id, "message": getattr(record, "message", None),
        "created_at": record.created_at,
        "updated_at": record.updated_at, "completed_at": record.completed_at,
        "version": record.version,
    }
    predictions, shots, attempts = [], [], []
    for p in record.predictions:
        shot = p.shot or None
        predictions.append(_prediction_row(gid, p, shot))
        if shot is not None:
            shot_row, attempt_rows = _shot_rows(record, shot, getattr(p, "results", None) or {})
            shots.append(shot_row)
            attempts.extend(attempt_rows)
    refines = []
    refine = record.plan.refine
    if refine is not None:
        refines.append({
            "refine_id": refine.refine_id, "generation_id": gid,
            "task_id": refine.task_ids[0] if refine.task_ids else None,
            "task_ids": list(refine.task_ids),
            "params": refine.model_dump(mode="json", exclude={"refine_id", "generation_id", "task_ids"}),
            "created_at": record.created_at,
        })
    return GenerationRows(generation, predictions, shots, attempts, refines)


def _prediction_row(gid: str, p: PredictionRecord, shot: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "generation_id": gid, "prediction_index": p.index, "task_id": p.task_id,
        "task_ids": list(p.task_ids), "shot_id": None if shot is None else shot.get("shot_id"),
        "status": p.status.value, "result": p.result, "error_code": p.error_code,
        "error_message": p.error_message, "follow_up_task_id": p.follow_up_task_id,
    }


def _shot_rows(record: GenerationRecord, shot: dict[str, Any], results: dict[str, Any]
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``orchestrated_shots`` row and the ``shot_attempts`` rows of an
    ``OrchestratedShot.to_dict()`` document; ``results`` (task id -> TaskResult JSON, the
    prediction's) gives each COMPLETED attempt its result."""
    settings = shot.get("settings") or {}
    attempts = list(shot.get("attempts") or [])
    accepted = next((a for a in attempts if a["task_id"] == shot.get("accepted_task_id")), None)
    # The shot's decision is the one its final attempt got (ACCEPT, ACCEPT_BEST or GIVE_UP).
    decisions = [a.get("decision") for a in attempts if a.get("decision")]
    done = bool(shot.get("done"))
    row = {
        "shot_id": shot["shot_id"], "generation_id": record.generation_id,
        "prediction_index": shot["prediction_index"],
        "max_attempts": settings.get("max_attempts", 3),
        "min_confidence_score": settings.get("min_confidence_score", 0.7),
        "evaluation_provider": settings.get("evaluation_provider", "auto"),
        "accepted_task_id": shot.get("accepted_task_id"),
        "accepted_attempt": None if accepted is None else accepted["attempt"],
        "decision": decisions[-1] if done and decisions else None, "done": done,
        "created_at": record.created_at, "updated_at": record.updated_at,
    }
    attempt_rows = [{
        "shot_id": shot["shot_id"], "attempt": a["attempt"], "task_id": a["task_id"],
        "task_type": a.get("task_type"), "params": a.get("params"),
        "status": a.get("status") or "PENDING", "score": a.get("score"),
        "reasons": list(a.get("reasons") or []), "decision": a.get("decision"),
        "error_code": a.get("error_code"), "result": results.get(a["task_id"]),
    } for a in attempts]
    return row, attempt_rows


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class GenerationChange:
    """A generation's status changed: ``before`` (the status before, None for a generation not
    projected before) to ``after``, by ``record`` (the document of that version)."""

    generation_id: str
    before: str | None
    after: str
    version: int
    record: GenerationRecord


@dataclass
class GenerationBatchResult:
    written: int = 0  # generations whose row was replaced
    changes: list[GenerationChange] = field(default_factory=list)  # in version order per generation


@dataclass
class ProjectedBatch(BatchResult):
    """What one projector batch wrote: the tasks' part (:class:`BatchResult`, its
    ``transitions``) and the generations' part (``generation_changes``), one transaction."""

    generations_written: int = 0
    generation_changes: list[GenerationChange] = field(default_factory=list)
    # The workflows' part (projection/db/workflow_projection.py): rows written, status changes.
    workflows_written: int = 0
    workflow_changes: list[Any] = field(default_factory=list)

    @classmethod
    def of(cls, tasks: BatchResult, generations: GenerationBatchResult | None = None,
           workflows: Any = None) -> ProjectedBatch:
        generations = generations or GenerationBatchResult()
        return cls(**vars(tasks), generations_written=generations.written,
                   generation_changes=generations.changes,
                   workflows_written=0 if workflows is None else workflows.written,
                   workflow_changes=[] if workflows is None else workflows.changes)


def apply_generation_records(conn: psycopg.Connection, records: Iterable[GenerationRecord]) -> int:
    """Project ``records`` (in topic order) inside one transaction; return how many generations
    were written (those whose record was newer than the stored row)."""
    return project_generation_records(conn, records).written


def project_generation_records(conn: psycopg.Connection, records: Iterable[GenerationRecord]
                               ) -> GenerationBatchResult:
    """Project ``records`` (in topic order) inside one transaction (a savepoint of the caller's,
    if one is open); report the generations written and their status changes."""
    written, changes = replace_by_version(conn, _GENERATIONS, records, lambda r: r.generation_id,
                                          rows_of, GenerationChange)
    return GenerationBatchResult(written, changes)


# --------------------------------------------------------------------------- reading (API)


_SELECT_GENERATION = sql.SQL("SELECT {} FROM generations").format(
    sql.SQL(", ").join(map(sql.Identifier, GENERATION_COLUMNS)))


@dataclass(frozen=True)
class GenerationFilter:
    status: str | None = None
    strategy: str | None = None
    generation_type: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


async def get_generation(conn: psycopg.AsyncConnection, generation_id: str, tenant_id: str
                         ) -> dict[str, Any] | None:
    """The generation row with ``predictions`` (each with its ``shot`` and the shot's
    ``attempts``) and ``refines``; None when the tenant has no such generation."""
    cur = await conn.execute(
        _SELECT_GENERATION + sql.SQL(" WHERE generation_id = %s AND origin_tenant_id = %s"),
        (generation_id, tenant_id))
    row = await cur.fetchone()
    if row is None:
        return None
    cur = await conn.execute(
        f"SELECT {', '.join(PREDICTION_COLUMNS)} FROM predictions WHERE generation_id = %s"
        " ORDER BY prediction_index", (generation_id,))
    predictions = await cur.fetchall()
    cur = await conn.execute(
        f"SELECT {', '.join(SHOT_COLUMNS)} FROM orchestrated_shots WHERE generation_id = %s",
        (generation_id,))
    shots = {s["shot_id"]: {**s, "attempts": []} for s in await cur.fetchall()}
    if shots:
        cur = await conn.execute(
            f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM shot_attempts WHERE shot_id = ANY(%s)"
            " ORDER BY shot_id, attempt", (list(shots),))
        for attempt in await cur.fetchall():
            shots[attempt["shot_id"]]["attempts"].append(attempt)
    cur = await conn.execute(
        f"SELECT {', '.join(REFINE_COLUMNS)} FROM refines WHERE generation_id = %s ORDER BY refine_id",
        (generation_id,))
    refines = await cur.fetchall()
    return {**row, "predictions": [{**p, "shot": shots.get(p["shot_id"])} for p in predictions],
            "refines": refines}


async def list_generations(conn: psycopg.AsyncConnection, tenant_id: str, f: GenerationFilter, *,
                           page: int, page_size: int, sort_order: str = "desc"
                           ) -> tuple[list[dict[str, Any]], int]:
    """One page of the tenant's generations (newest first unless ``sort_order`` is "asc") and
    the total count of matches."""
    clauses, args = tenant_where(tenant_id, f, ("status", "strategy", "generation_type"))
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses)
    direction = sql.SQL("ASC" if sort_order == "asc" else "DESC")
    cur = await conn.execute(
        _SELECT_GENERATION + where + sql.SQL(" ORDER BY created_at {}, generation_id {} LIMIT %s OFFSET %s")
        .format(direction, direction), [*args, page_size, (page - 1) * page_size])
    rows = await cur.fetchall()
    cur = await conn.execute(sql.SQL("SELECT count(*) AS n FROM generations") + where, args)
    total = (await cur.fetchone())["n"]
    return rows, total
