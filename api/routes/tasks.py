"""/tasks: submit, read, list, fetch the result, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response
from starlette.concurrency import run_in_threadpool

from api.deps import CallerDep, DbDep, GatewayDep, MetricsDep, NotifierDep, PoolDep, SettingsDep
from api.models.tasks import (
    CancelAccepted,
    TaskAccepted,
    TaskLinks,
    TaskListQuery,
    TaskPublic,
    TaskResultPublic,
    TasksPublic,
    TaskSubmit,
)
from api.problems import ApiProblem
from api.routes.common import (
    UuidPath,
    WaitQuery,
    finished,
    fleet_scope,
    idempotency_header,
    list_scope,
    may_have_finished,
    not_found,
    problem_responses,
    read_row,
    row_or_404,
    send,
    task_uuid,
)
from api.routing import ApiRoute
from producers.errors import DeliveryError, TaskTooLargeError
from producers.submit import validate_params
from projection.db.queries import TaskFilter, get_task, list_tasks
from schemas.enums import TERMINAL_STATUSES, TaskStatus, TaskType
from schemas.errors import TaskValidationError

router = APIRouter(prefix="/tasks", tags=["tasks"], route_class=ApiRoute)

IdempotencyKey = Annotated[str | None, idempotency_header("task: a repeat queues nothing")]


@router.post("", status_code=202, response_model=TaskAccepted,
             responses=problem_responses(400, 401, 409, 413, 422, 503))
async def submit_task(
    body: Annotated[TaskSubmit, Body()], caller: CallerDep, pool: PoolDep, producer: GatewayDep,
    metrics: MetricsDep, response: Response, idempotency_key: IdempotencyKey = None,
) -> TaskAccepted:
    """Submit a task of any of the ten types; 202 once the broker has acknowledged it."""
    task_type = TaskType(body.task_type)
    try:
        params = validate_params(task_type, body.model_dump(
            exclude={"task_type", "webhook_url", "entity_id", "origin_version"}))
    except TaskValidationError as exc:
        raise ApiProblem(422, "validation-error", str(exc)) from None
    if idempotency_key is not None:  # only then a database connection: a repeat is answered from it
        async with pool.connection() as db:
            existing = await get_task(db, producer.task_id_for(idempotency_key, caller.tenant_id),
                                      caller.tenant_id)
        if existing is not None:
            same = (existing["task_type"] == task_type.value
                    and existing["webhook_url"] == body.webhook_url
                    and existing.get("entity_id") in (None, body.entity_id)
                    and existing["params"] in (None, params.model_dump(mode="json")))
            if not same:
                raise ApiProblem(409, "idempotency-key-reused",
                                 "this Idempotency-Key was used for a different task; use a new key")
            return _accepted(response, str(existing["task_id"]), task_type,
                             TaskStatus(existing["status"]), replay=True)
    try:
        task_id, replay = await run_in_threadpool(
            producer.submit, task_type, params, tenant_id=caller.tenant_id,
            idempotency_key=idempotency_key, webhook_url=body.webhook_url,
            entity_id=body.entity_id, origin_version=body.origin_version)
    except TaskTooLargeError as exc:
        raise ApiProblem(413, "task-too-large", str(exc)) from None
    except TaskValidationError as exc:  # what only writing the record finds (e.g. unencodable text)
        raise ApiProblem(422, "validation-error", str(exc)) from None
    except DeliveryError:
        raise ApiProblem(503, "broker-unavailable",
                         "the broker did not acknowledge the task, so it was not queued; retry "
                         "(with the same Idempotency-Key)", headers={"Retry-After": "1"}) from None
    if not replay:
        metrics.submits.labels(task_type.value).inc()
    return _accepted(response, task_id, task_type, TaskStatus.PENDING, replay=replay)


def _accepted(response: Response, task_id: str, task_type: TaskType, status: TaskStatus,
              *, replay: bool) -> TaskAccepted:
    links = TaskLinks.of(task_id)
    response.headers["Location"] = links.self_
    return TaskAccepted(task_id=task_id, task_type=task_type, status=status,
                        idempotent_replay=replay, links=links)


@router.get("", response_model=TasksPublic, responses=problem_responses(401, 403, 422))
async def list_tasks_route(query: Annotated[TaskListQuery, Query()], caller: CallerDep,
                           db: DbDep) -> TasksPublic:
    """The caller's tenant's tasks, filtered, sorted and paged; ``total`` counts every match.
    An operator key lists every tenant's tasks, or one tenant's with ``tenant``."""
    scope = list_scope(caller, query.tenant, "tasks")
    f = TaskFilter(
        status=None if query.status is None else query.status.value,
        task_type=None if query.task_type is None else query.task_type.value,
        provider_type=query.provider_type, origin_instance=query.origin_instance,
        origin_zone=query.origin_zone, origin_tenant_id=query.origin_tenant_id,
        entity_id=query.entity_id, created_after=query.created_after, created_before=query.created_before,
        search=query.search,
    )
    rows, total = await list_tasks(db, scope, f, page=query.page,
                                   page_size=query.page_size, sort_by=query.sort_by,
                                   sort_order=query.sort_order)
    return TasksPublic.of(map(TaskPublic.from_row, rows), total, query)


@router.get("/{task_id}", response_model=TaskPublic, responses=problem_responses(401, 404, 422))
async def read_task(task_id: UuidPath, caller: CallerDep, pool: PoolDep, notifier: NotifierDep,
                    settings: SettingsDep, wait: WaitQuery = 0.0) -> TaskPublic:
    """Status, progress, attempt, result, error and timestamps of one task; with ``wait``, a
    long poll that answers when the task has ended (COMPLETED, FAILED or CANCELLED: all final;
    a retry shows as QUEUED for the next attempt with the last error). An operator key reads any
    tenant's task."""
    tid = task_uuid(task_id)
    scope = fleet_scope(caller)

    def accept(row: dict) -> dict | None:  # a notified row: only a task the caller may read
        return row if scope is None or row["origin_tenant_id"] == scope else None

    row = await read_row(get_task, tid, scope, pool=pool, notifier=notifier, settings=settings,
                         wait=wait, ended=finished, may_end=may_have_finished, accept=accept)
    if row is None:
        raise not_found(tid, caller.tenant_id)
    return TaskPublic.from_row(row)


@router.get("/{task_id}/result", response_model=TaskResultPublic,
            responses=problem_responses(401, 404, 409))
async def read_result(task_id: UuidPath, caller: CallerDep, db: DbDep) -> TaskResultPublic:
    """The result of a COMPLETED task; 409 while it has none (not finished, failed, cancelled).
    An operator key reads any tenant's."""
    tid = task_uuid(task_id)
    row = await row_or_404(get_task, db, "task", tid, caller, any_tenant=True)
    if row["status"] != TaskStatus.COMPLETED.value or row["result"] is None:
        why = f" ({row['error_code']}: {row['error_message']})" if row["error_code"] else ""
        raise ApiProblem(409, "no-result", f"task {tid} is {row['status']}{why}; it has no result")
    return TaskResultPublic(task_id=tid, status=TaskStatus.COMPLETED, result=row["result"],
                            completed_at=row["completed_at"])


@router.post("/{task_id}/cancel", status_code=202, response_model=CancelAccepted,
             responses=problem_responses(401, 404, 409, 503))
async def cancel_task(task_id: UuidPath, caller: CallerDep, db: DbDep,
                      producer: GatewayDep, metrics: MetricsDep) -> CancelAccepted:
    """Cancel a pending, queued or running task, or one waiting for its retry (QUEUED after a
    failed attempt: it ends CANCELLED and never runs again); 409 for a task that already ended."""
    tid = task_uuid(task_id)
    row = await row_or_404(get_task, db, "task", tid, caller)
    if TaskStatus(row["status"]) in TERMINAL_STATUSES:
        raise ApiProblem(409, "task-finished",
                         f"task {tid} already ended {row['status']}; there is nothing to cancel")
    await send(producer.cancel, row, requested_by=f"api-key:{caller.key_id}",
               reason="requested through the API", too_large=None,
               unsent="the cancel could not be delivered; retry")
    metrics.cancels.inc()
    return CancelAccepted(task_id=tid, status=TaskStatus(row["status"]))
