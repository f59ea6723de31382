"""Helpers shared by the resource routers."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Header, Path, Query
from starlette.concurrency import run_in_threadpool

from api.notifier import EventNotifier
from api.problems import PROBLEM_MEDIA_TYPE, ApiProblem, Problem
from api.settings import ApiSettings
from producers.errors import DeliveryError, TaskTooLargeError
from projection.db.apikeys import Caller
from projection.db.pool import AsyncPool
from schemas.enums import TERMINAL_STATUSES
from schemas.records import UUID_PATTERN

# A read-model lookup by id: ``get_task``, ``get_workflow``, ``get_generation`` (connection, id,
# tenant scope; None for every tenant's).
RowGetter = Callable[[Any, str, str | None], Awaitable[dict[str, Any] | None]]


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries: these statuses answer with a problem document."""
    return {s: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}} for s in statuses}


# An id in a path: a UUID's text, as the document says (any other text is a 404: no such thing).
UuidPath = Annotated[str, Path(json_schema_extra={"format": "uuid", "pattern": UUID_PATTERN})]


def task_uuid(task_id: str) -> str:
    """The canonical text of a task id; 404 for anything that is not a UUID (no such task)."""
    try:
        return str(uuid.UUID(task_id))
    except ValueError:
        raise ApiProblem(404, "task-not-found", f"no task {task_id[:64]!r}") from None


def missing(kind: str, subject_id: str, tenant_id: str, hint: str = "") -> ApiProblem:
    """404 ``<kind>-not-found``. The caller's own tenant is named (a key knows its tenant): "not
    found" then reads as "not this key's", the usual slip being a task (workflow, generation)
    submitted under another tenant or none. The answer is the same for an unknown id and for
    another tenant's."""
    return ApiProblem(404, f"{kind}-not-found", f"no {kind} {subject_id} for tenant {tenant_id}{hint}")


def not_found(task_id: str, tenant_id: str) -> ApiProblem:
    """404 for a task the caller cannot see (:func:`missing`)."""
    return missing("task", task_id, tenant_id)


def fleet_scope(caller: Caller) -> str | None:
    """The tenant a read is scoped to: None (every tenant) for an operator key."""
    return None if caller.operator else caller.tenant_id


def list_scope(caller: Caller, tenant: str | None, listed: str) -> str | None:
    """The tenant a list of ``listed`` (tasks, workflows) is scoped to: the caller's, every
    tenant's for an operator key, or the one an operator key names with ``tenant``; 403 for a
    tenant key naming one."""
    if tenant is None:
        return fleet_scope(caller)
    if not caller.operator:
        raise ApiProblem(403, "operator-only", f"tenant: only an operator key lists other "
                         f"tenants' {listed}; a tenant key lists its own without it")
    return tenant


async def row_or_404(get: RowGetter, conn: Any, kind: str, subject_id: str, caller: Caller, *,
                     any_tenant: bool = False, hint: str = "") -> dict[str, Any]:
    """The row of ``subject_id`` from the caller's own tenant (``any_tenant``: from any tenant
    for an operator key); :func:`missing` otherwise."""
    row = await get(conn, subject_id, fleet_scope(caller) if any_tenant else caller.tenant_id)
    if row is None:
        raise missing(kind, subject_id, caller.tenant_id, hint)
    return row


async def read_row(get: RowGetter, subject_id: str, scope: str | None, *, pool: AsyncPool,
                   notifier: EventNotifier, settings: ApiSettings, wait: float,
                   ended: Callable[[dict[str, Any]], bool], may_end: Callable[[str], bool],
                   accept: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
                   ) -> dict[str, Any] | None:
    """The row of ``subject_id`` (None: not found in ``scope``); with ``wait``, a long poll
    that answers as soon as ``ended`` holds for it (``EventNotifier.long_poll``). 422 for a
    ``wait`` longer than the server allows."""
    check_wait(wait, settings)

    async def read() -> dict[str, Any] | None:
        async with pool.connection() as conn:  # not held while waiting
            return await get(conn, subject_id, scope)

    if not wait:
        return await read()
    return await notifier.long_poll(subject_id, read, ended, wait, settings.sse_poll_s,
                                    may_end=may_end, accept=accept)


def idempotency_header(repeat: str) -> Any:
    """The ``Idempotency-Key`` header of a POST; ``repeat`` ends its description: what the key
    names, and what a repeat does (``"task: a repeat queues nothing"``)."""
    return Header(alias="Idempotency-Key", min_length=1, max_length=255,
                  description=f"The same key (per tenant) always names the same {repeat}.")


async def send(call: Callable[..., Any], *args: Any, too_large: str | None, unsent: str,
               **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``, a blocking produce that returns once the broker acknowledged,
    off the event loop. A record the broker would refuse as too large is 413 of problem type
    ``too_large`` (None: the call cannot make one); an unacknowledged one is 503
    ``broker-unavailable`` with ``unsent`` as detail: it was not sent, a retry may be."""
    try:
        return await run_in_threadpool(call, *args, **kwargs)
    except TaskTooLargeError as exc:
        if too_large is None:
            raise
        raise ApiProblem(413, too_large, str(exc)) from None
    except DeliveryError:
        raise ApiProblem(503, "broker-unavailable", unsent, headers={"Retry-After": "1"}) from None


def finished(row: dict) -> bool:
    """True once no further status event is expected for the task: its status is terminal.
    FAILED is final (a retry is QUEUED for the next attempt, state/lifecycle.py), so this needs
    no retry policy and agrees with whatever policy the workers and processors are configured
    with."""
    return may_have_finished(row["status"])


_FINISHED = frozenset(s.value for s in TERMINAL_STATUSES)


def may_have_finished(status: str) -> bool:
    """Whether a task with this status has :func:`finished` (the status alone tells; kept as the
    long poll's cheap check of a notification)."""
    return status in _FINISHED


WaitQuery = Annotated[float, Query(ge=0, description=(
    "Seconds to wait for it to end before answering (a long poll): the answer comes as soon as "
    "it has ended, else with its state at the deadline. One accepted a moment ago but not yet "
    "readable is waited for too (404 only if it is still unknown at the deadline). At most the "
    "server's COMPUTE_API_MAX_WAIT_S (60 by default)."))]


def check_wait(wait: float, settings: ApiSettings) -> None:
    """422 for a ``wait`` longer than the server allows."""
    if wait > settings.max_wait_s:
        raise ApiProblem(422, "validation-error", f"wait: at most {settings.max_wait_s:g} seconds")
