"""The write side of the read model: fold a batch of events into ``tasks`` and ``task_events``.

Used by the live projector and by ``rebuild``; both call :func:`apply_batch` with the events of
a batch in topic order, so they write the same rows.

Rules (ARCHITECTURE.md section 4):

* Status columns are ``state.lifecycle.fold`` applied to the :class:`~state.lifecycle.TaskState`
  loaded from the row, so duplicates, reordering and replays never regress a row; ``version``
  counts the changes the fold applied (0: only the task-submitted event seen so far).
* Task-submitted columns (params, webhook, orchestration, origin) come from the submitted event
  of the highest attempt (the earliest one of that attempt on a tie); the tenant, origin version
  and entity id a submitted event leaves empty are taken from the status events, which carry the
  task's. Not the origin instance and zone: a status event's name whoever wrote it (a worker, a
  processor; issue 17), not the task's submitter.
* ``task_events`` holds every distinct status event once, numbered 1, 2, 3... per task in the
  order first seen (the SSE ids).
* Concurrency: each transaction takes a per-task advisory lock (in sorted order, so two
  projectors never deadlock; ``projection_claim``, migration 0008) before reading the rows it
  rewrites, and the upsert is guarded so a row never moves to a lower ``version`` or
  ``event_seq`` even without the lock. The live projector may skip the read for rows it
  remembers writing (projection/db/task_row_cache.py); the claim then checks that they did not change.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from projection.db.pg_values import jsonb, without_nul
from projection.db.queries import TASK_COLUMNS
from projection.db.task_row_cache import CachedTask, PendingRows, TaskRowCache
from schemas.enums import ErrorCode, TaskStatus, TaskType
from schemas.events import StatusChanged, TaskError, TaskSubmitted
from state.lifecycle import TaskState, fold

NOTIFY_CHANNEL = "task_events"
# A task's notification of a status that may end it also carries its row, as the API reads it
# (projection.db.queries.TASK_COLUMNS, row_to_json): a long poll waiting for the end answers with it
# instead of reading the row again (a PostgreSQL round trip on the path to every answer).
ROW_NOTIFIED_STATUSES = frozenset(s.value for s in (TaskStatus.COMPLETED, TaskStatus.FAILED,
                                                    TaskStatus.CANCELLED))
# pg_notify refuses a payload of 8000 bytes or more: a larger row is left out (and read instead).
_NOTIFY_ROW_MAX_BYTES = 7900


def notify_payload(subject_id: str, status: str | None) -> str:
    """What a NOTIFY on ``NOTIFY_CHANNEL`` carries: the task (or generation) id and the status
    its row has now, so that a listener waiting for an end need not re-read on every change
    (plus, for a task, the row itself after a space: see ``ROW_NOTIFIED_STATUSES``)."""
    return f"{subject_id} {status or ''}"


class Notice(NamedTuple):
    subject_id: str
    status: str | None  # None: the payload does not say (a bare id)
    row: str | None  # the task's row as JSON (row_to_json of TASK_COLUMNS), when carried


def parse_notify_payload(payload: str) -> Notice:
    subject_id, sep, rest = payload.partition(" ")
    status, _, row = rest.partition(" ")
    return Notice(subject_id, status if sep else None, row or None)


_NOTIFY = "SELECT count(pg_notify(%s, x)) FROM unnest(%s::text[]) AS x"
# One task's notification with its row. One statement per task: joined to an array of ids, the
# plan that psycopg prepares while the table is still small (a fresh database) scans the whole
# table, and goes on doing so as it grows (13 ms per batch at 3,000 tasks).
_NOTIFY_WITH_ROW = sql.SQL("""
    SELECT pg_notify({channel}, %s || coalesce(' ' || (
        SELECT doc FROM (SELECT row_to_json(r)::text AS doc
                         FROM (SELECT {columns} FROM tasks WHERE task_id = %s) AS r) AS d
        WHERE octet_length(doc) < {limit}), ''))
""").format(channel=sql.Literal(NOTIFY_CHANNEL), limit=sql.Literal(_NOTIFY_ROW_MAX_BYTES),
            columns=sql.SQL(", ").join(map(sql.Identifier, TASK_COLUMNS)))


# Arbitrary seed of the advisory-lock hash, so these locks do not collide with other users'.
_LOCK_SEED = 0x7461736B

STATUS_COLUMNS = (
    "task_type", "status", "attempt", "progress", "message", "result", "error_code",
    "error_message", "created_at", "queued_at", "started_at", "completed_at", "updated_at",
    "last_event_id", "version", "event_seq",
)
SUBMITTED_COLUMNS = (
    "params", "origin_instance", "origin_zone", "origin_tenant_id", "provider_type", "webhook_url",
    "idempotency_key", "generation_id", "orchestration", "submitted_event_id", "submitted_attempt",
    "submitted_at", "origin_version", "entity_id",
)
ORIGIN_COLUMNS = ("origin_instance", "origin_zone", "origin_tenant_id", "origin_version", "entity_id")
# The task's own values that every status event carries too (migration 0012).
STATUS_CARRIED_COLUMNS = ("origin_tenant_id", "origin_version", "entity_id")
WRITE_COLUMNS = ("task_id", *STATUS_COLUMNS, *SUBMITTED_COLUMNS)
_JSON_COLUMNS = frozenset({"params", "result", "orchestration"})

_UPSERT = (
    f"INSERT INTO tasks ({', '.join(WRITE_COLUMNS)}) VALUES ({', '.join(['%s'] * len(WRITE_COLUMNS))})"
    f" ON CONFLICT (task_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in WRITE_COLUMNS[1:])
    # The guard: never to a lower version or event sequence, whoever writes.
    + " WHERE tasks.version <= EXCLUDED.version AND tasks.event_seq <= EXCLUDED.event_seq"
)
_INSERT_EVENT = (
    "INSERT INTO task_events (event_id, task_id, seq, attempt, status, progress, occurred_at, payload)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class FlatStatus:
    """A StatusChanged as the fold reads it, with the result as the JSON the row stores."""

    event_id: str
    task_id: str
    attempt: int
    occurred_at: datetime
    task_type: TaskType
    status: TaskStatus
    progress: float | None
    message: str | None
    result: dict[str, Any] | None
    error: TaskError | None


def flatten(event: StatusChanged) -> FlatStatus:
    env = event.envelope
    return FlatStatus(
        event_id=env.event_id, task_id=env.task_id, attempt=env.attempt,
        occurred_at=env.occurred_at, task_type=env.task_type, status=event.status,
        progress=event.progress, message=event.message,
        result=None if event.result is None else event.result.model_dump(mode="json"),
        error=event.error,
    )


def state_from_row(row: dict[str, Any] | None) -> TaskState | None:
    """The TaskState a row stores; None when no status event has been folded into it yet."""
    if row is None or row["version"] == 0:
        return None
    return TaskState(
        task_id=str(row["task_id"]), task_type=TaskType(row["task_type"]),
        status=TaskStatus(row["status"]), attempt=row["attempt"], progress=row["progress"],
        version=row["version"], created_at=row["created_at"], queued_at=row["queued_at"],
        started_at=row["started_at"], completed_at=row["completed_at"],
        updated_at=row["updated_at"], last_event_id=str(row["last_event_id"]),
        message=row["message"], result=row["result"],
        error_code=None if row["error_code"] is None else ErrorCode(row["error_code"]),
        error_message=row["error_message"],
    )


def _status_columns(state: TaskState) -> dict[str, Any]:
    return {
        "task_type": None if state.task_type is None else state.task_type.value,
        "status": state.status.value, "attempt": state.attempt, "progress": state.progress,
        "message": state.message, "result": state.result,
        "error_code": None if state.error_code is None else state.error_code.value,
        "error_message": state.error_message, "created_at": state.created_at,
        "queued_at": state.queued_at, "started_at": state.started_at,
        "completed_at": state.completed_at, "updated_at": state.updated_at,
        "last_event_id": state.last_event_id, "version": state.version,
    }


def _empty_row(task_id: str) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in WRITE_COLUMNS}
    row.update(task_id=task_id, version=0, event_seq=0, progress=0.0)
    return row


def _submitted_wins(event: TaskSubmitted, row: dict[str, Any]) -> bool:
    if row["submitted_event_id"] is None:
        return True
    env = event.envelope
    if env.attempt != row["submitted_attempt"]:
        return env.attempt > row["submitted_attempt"]
    return (env.occurred_at, env.event_id) < (row["submitted_at"], str(row["submitted_event_id"]))


def _apply_submitted(row: dict[str, Any], event: TaskSubmitted) -> None:
    env = event.envelope
    if not _submitted_wins(event, row):
        return
    if row["version"] == 0:  # nothing folded yet: the row shows the (winning) submission
        row.update(task_type=env.task_type.value, status=TaskStatus.PENDING.value,
                   attempt=env.attempt, created_at=env.occurred_at, updated_at=env.occurred_at)
    orchestration = event.orchestration
    row.update(
        params=event.params.model_dump(mode="json"),
        provider_type=event.params.provider_type,
        webhook_url=event.webhook_url,
        idempotency_key=event.idempotency_key,
        generation_id=None if orchestration is None else orchestration.generation_id,
        orchestration=None if orchestration is None else orchestration.model_dump(mode="json"),
        submitted_event_id=env.event_id, submitted_attempt=env.attempt,
        submitted_at=env.occurred_at,
    )
    for column in ORIGIN_COLUMNS:
        row[column] = getattr(env, column) or row[column]


def _event_payload(event: StatusChanged) -> dict[str, Any]:
    return event.model_dump(mode="json")


@dataclass
class Transition:
    """One status event that changed a task's state, in order (for webhooks); ``row`` is the
    task's row as written at the end of the batch."""

    task_id: str
    before: TaskState | None
    after: TaskState
    row: dict[str, Any]


@dataclass
class BatchResult:
    tasks_written: int = 0
    events_inserted: int = 0
    transitions: list[Transition] = field(default_factory=list)
    # (task id, row) of tasks whose submitted event arrived after status events already
    # projected in an earlier batch (statuses and tasks travel on different topics): their
    # earlier status changes had no webhook URL to go to yet.
    late_submissions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # With a TaskRowCache: the rows to remember once the transaction committed.
    pending_rows: PendingRows | None = None


def _claim(conn: psycopg.Connection, task_ids: Sequence[str],
           remembered: dict[str, CachedTask] | None) -> psycopg.Cursor:
    """Send ``projection_claim`` (migration 0008): the tasks' advisory locks, and with
    ``remembered`` the check that raises SerializationFailure if a row changed since. Not
    awaited: its result (the transaction id) is read once the batch committed."""
    xmins = None if remembered is None else [remembered[t].xmin for t in task_ids]
    cur = conn.cursor()
    cur.execute("SELECT projection_claim(%s::text[], %s, %s::text[])",
                (list(task_ids), _LOCK_SEED, xmins))
    return cur


def _read_rows(conn: psycopg.Connection, task_ids: Sequence[str],
               among: Sequence[str] | None = None) -> tuple[
        dict[str, dict[str, Any]], dict[str, str], dict[str, set[str]]]:
    """The stored rows of ``task_ids``, their xmins, and the ids of the events stored for them:
    every one (what a cache remembers), or only those ``among`` the given ids (all the fold's
    duplicate check needs: a long task has thousands of progress events). Both reads are sent
    before either is read: one round trip in pipeline mode. The rows are looked up one id at a
    time: with ``task_id = ANY(ids)``, the plan psycopg prepares while the table is small (a
    fresh database) scans the whole table, and goes on doing so as it grows (migration 0009)."""
    with conn.cursor(row_factory=dict_row) as rows_cur, conn.cursor() as events_cur:
        rows_cur.execute(
            f"SELECT t.* FROM unnest(%s::uuid[]) AS ids(id) CROSS JOIN LATERAL (SELECT xmin::text"
            f" AS row_xmin, {', '.join(WRITE_COLUMNS)} FROM tasks WHERE task_id = ids.id"
            " OFFSET 0) AS t", (task_ids,))  # OFFSET 0: not flattened into a join
        events_cur.execute(
            "SELECT task_id::text, event_id::text FROM task_events WHERE task_id = ANY(%s::uuid[])"
            + ("" if among is None else " AND event_id = ANY(%s::uuid[])"),
            (task_ids,) if among is None else (task_ids, among))
        rows = {str(r["task_id"]): _normalised(r) for r in rows_cur.fetchall()}
        event_ids: dict[str, set[str]] = {t: set() for t in task_ids}
        for task_id, event_id in events_cur.fetchall():
            event_ids[task_id].add(event_id)
    xmins = {t: row.pop("row_xmin") for t, row in rows.items()}
    return rows, xmins, event_ids


def apply_batch(conn: psycopg.Connection, events: Iterable[StatusChanged | TaskSubmitted]) -> BatchResult:
    """Fold ``events`` (in topic order) into the database inside one transaction (a savepoint of
    the caller's, if one is open); the caller commits its offsets only after this returns."""
    with conn.transaction():
        return apply_events(conn, events)


def apply_events(conn: psycopg.Connection, events: Iterable[StatusChanged | TaskSubmitted],
                 cache: TaskRowCache | None = None) -> BatchResult:
    """:func:`apply_batch` inside the caller's transaction. In pipeline mode its statements
    travel together: one round trip for its reads, the rest goes with the caller's commit. With
    a ``cache`` that remembers every task of the batch, there is no read: the whole batch is
    one round trip (projection/db/task_row_cache.py); a remembered row that changed since raises
    psycopg.errors.SerializationFailure, and the caller writes the batch again after
    ``cache.clear()``. ``result.pending_rows`` (with a cache) is what to remember once the
    transaction committed."""
    events = list(events)
    result = BatchResult()
    if not events:
        return result
    task_ids = sorted({e.envelope.task_id for e in events})
    remembered = None if cache is None else cache.lookup(task_ids)
    claim = _claim(conn, task_ids, remembered)
    if remembered is not None:
        before = {t: entry.row for t, entry in remembered.items()}
        xmins = {t: entry.xmin for t, entry in remembered.items()}
        event_ids = {t: set(entry.event_ids) for t, entry in remembered.items()}
    else:
        among = None if cache is not None else [
            e.envelope.event_id for e in events if isinstance(e, StatusChanged)]
        before, xmins, event_ids = _read_rows(conn, task_ids, among)
    rows = {tid: dict(before.get(tid) or _empty_row(tid)) for tid in task_ids}
    states = {tid: state_from_row(before.get(tid)) for tid in task_ids}
    new_events: list[tuple[Any, ...]] = []
    for event in events:
        tid = event.envelope.task_id
        row = rows[tid]
        if isinstance(event, TaskSubmitted):
            old = before.get(tid)
            if (old is not None and old["version"] > 0 and old["submitted_event_id"] is None
                    and all(t != tid for t, _ in result.late_submissions)):
                result.late_submissions.append((tid, row))
            _apply_submitted(row, event)
            continue
        env = event.envelope
        if env.event_id in event_ids[tid]:  # stored already, or earlier in this batch
            continue
        event_ids[tid].add(env.event_id)
        previous = states[tid]
        states[tid] = fold(previous, flatten(event))
        if states[tid] is not previous:
            result.transitions.append(Transition(tid, previous, states[tid], row))
        row["event_seq"] += 1
        new_events.append((env.event_id, tid, row["event_seq"], env.attempt,
                           event.status.value, event.progress, env.occurred_at,
                           jsonb(_event_payload(event))))
        for column in STATUS_CARRIED_COLUMNS:
            row[column] = row[column] or getattr(env, column)
    changed: list[dict[str, Any]] = []
    for tid in task_ids:
        row, state = rows[tid], states[tid]
        if state is not None:
            row.update(_status_columns(state))
        old = before.get(tid)
        if old is not None and all(row[c] == old[c] for c in WRITE_COLUMNS[1:]):
            continue
        changed.append(row)
    if changed:
        with conn.cursor() as cur:
            cur.executemany(_UPSERT, [_params(row) for row in changed])
    if new_events:
        with conn.cursor() as cur:
            cur.executemany(_INSERT_EVENT, new_events)
    notify = sorted({e[1] for e in new_events} | {r["task_id"] for r in changed})
    plain: list[str] = []
    with_row: list[tuple[str, str]] = []
    for tid in notify:
        status = rows[tid]["status"]
        if status in ROW_NOTIFIED_STATUSES:
            with_row.append((notify_payload(tid, status), tid))
        else:
            plain.append(notify_payload(tid, status))
    if plain:
        conn.execute(_NOTIFY, (NOTIFY_CHANNEL, plain))
    if with_row:
        with conn.cursor() as cur:
            cur.executemany(_NOTIFY_WITH_ROW, with_row)
    result.tasks_written = len(changed)
    result.events_inserted = len(new_events)
    if cache is not None:
        result.pending_rows = PendingRows(
            claim, rows, {t: frozenset(ids) for t, ids in event_ids.items()}, xmins,
            frozenset(r["task_id"] for r in changed))
    return result


def _normalised(row: dict[str, Any]) -> dict[str, Any]:
    """A row as this module writes it: uuids as their text."""
    return {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in row.items()}


def _params(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(
        jsonb(row[c]) if c in _JSON_COLUMNS and row[c] is not None else without_nul(row[c])
        for c in WRITE_COLUMNS
    )
