"""/workflows: create (and start) a workflow, read one, list them, start, pause, resume, cancel,
clean up its outputs; /monitoring/workflows and /monitoring/workflows/stats.

POST validates the DAG up front (``workflows.spec.validate_workflow``: a 422 naming the step and
the field, nothing sent), produces a ``WorkflowRequested`` record to the workflows topic and
answers 202 once the broker has it. The processors' workflow engine creates the workflow from
that record (and starts it with ``start=true``); its progress comes back through the projected
workflows-state topic (GET). The commands (start, pause, resume, cancel) are
``WorkflowCommandRequested`` records on the same topic, checked first against the read model
(404 for another tenant's workflow, 409 for a command its status does not allow).

Reads are scoped like tasks: the key's tenant's workflows, every tenant's for an operator key.
Commands and cleanup act on the key's own tenant's workflows only.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.deps import CallerDep, DbDep, GatewayDep, NotifierDep, PoolDep, SettingsDep
from api.models.workflows import (
    ENDED,
    WorkflowAccepted,
    WorkflowActionAccepted,
    WorkflowCleanup,
    WorkflowCreate,
    WorkflowLinks,
    WorkflowListQuery,
    WorkflowMonitorItem,
    WorkflowMonitorPublic,
    WorkflowPublic,
    WorkflowsPublic,
    WorkflowStatsPublic,
    WorkflowSummary,
    workflow_path,
)
from api.problems import ApiProblem
from api.routes.common import (
    WaitQuery,
    fleet_scope,
    idempotency_header,
    list_scope,
    missing,
    problem_responses,
    read_row,
    row_or_404,
    send,
)
from api.routing import ApiRoute
from api.workflow_outputs import cleanup_outputs, storage_settings
from gpu_consumers.errors import StorageFailure
from producers.task_ids import keyed_uuid
from producers.workflows import WorkflowProducer
from projection.db.apikeys import Caller
from projection.db.workflow_projection import (
    WorkflowFilter,
    active_workflows,
    get_workflow,
    list_workflows,
    workflow_stats,
)
from schemas.workflow_events import WorkflowCommand
from workflows.spec import WorkflowSpec, WorkflowValidationError, validate_workflow


async def _workflow_producer(request: Request) -> WorkflowProducer:
    return request.app.state.workflows


WorkflowsDep = Annotated[WorkflowProducer, Depends(_workflow_producer)]

router = APIRouter(prefix="/workflows", tags=["workflows"], route_class=ApiRoute)
monitoring_router = APIRouter(prefix="/monitoring/workflows", tags=["monitoring"], route_class=ApiRoute)

IdempotencyKey = Annotated[str | None, idempotency_header("workflow: a repeat creates nothing")]
# Fixed namespace of idempotency-derived workflow ids; changing it would break replays.
_IDEMPOTENCY_NS = uuid.UUID("0b6f2a4e-9d3c-4e71-8a5f-2c7d9e1b4a60")
# The fields of a workflow's definition a repeat must match (else 409: a key reused).
_DEFINITION = ("name", "description", "suppress_subtask_events", "config")
_STEP_DEFINITION = ("task_type", "config", "depends_on", "input_mappings")

# Which statuses each command may be given in (docs/WORKFLOWS.md, the lifecycle).
_ALLOWED = {
    "start": frozenset({"CREATED"}),
    "pause": frozenset({"RUNNING"}),
    "resume": frozenset({"PAUSED"}),
    "cancel": frozenset({"CREATED", "RUNNING", "PAUSED"}),
}


def _spec(body: WorkflowCreate) -> WorkflowSpec:
    """The domain's validated spec; 422 naming the step and the field."""
    try:
        spec = WorkflowSpec.model_validate(body.model_dump(exclude={"webhook_url"}))
    except ValidationError as exc:  # a value the event model refuses, e.g. an unknown task type
        e = exc.errors()[0]
        loc = list(e["loc"])
        where = "field " + ".".join(map(str, loc))
        if len(loc) >= 3 and loc[0] == "steps" and isinstance(loc[1], int):
            where = f"step {body.steps[loc[1]].id!r}, field {'.'.join(map(str, loc[2:]))}"
        raise ApiProblem(422, "workflow-invalid", f"invalid workflow: {where}: {e['msg']}") from None
    try:
        validate_workflow(spec)
    except WorkflowValidationError as exc:
        raise ApiProblem(422, "workflow-invalid", str(exc)) from None
    return spec


def keyed_workflow_id(tenant_id: str, idempotency_key: str, secret: bytes | None) -> str:
    """The workflow id of (tenant, key), keyed with the deployment's ``IDEMPOTENCY_SECRET``
    (producers/task_ids.py), as a workflow id must be: a version-8 UUID
    (``schemas.workflow_events.new_workflow_id``)."""
    bits = keyed_uuid(_IDEMPOTENCY_NS, f"{tenant_id}\x1f{idempotency_key}", secret).int
    bits &= ~((0xC000 << 48) | (0xF000 << 64))
    bits |= (0x8000 << 48) | (8 << 76)
    return str(uuid.UUID(int=bits))


def _same_definition(row: dict[str, Any], spec: WorkflowSpec) -> bool:
    """Whether the stored workflow ``row`` is the one ``spec`` describes."""
    wanted = spec.model_dump(mode="json")
    if any(row[f] != (wanted[f] if f != "config" else wanted[f] or {}) for f in _DEFINITION):
        return False
    stored = [(s["step_id"], *(s[f] for f in _STEP_DEFINITION)) for s in row["steps"]]
    given = [(st["id"], st["task_type"], st["config"] or {}, st["depends_on"], st["input_mappings"])
             for st in wanted["steps"]]
    return stored == given


async def _send(call: Any, *args: Any, **kwargs: Any) -> Any:
    return await send(call, *args, too_large="workflow-too-large", unsent=(
        "the broker did not acknowledge the request, so it was not sent; retry"), **kwargs)


@router.post("", status_code=202, response_model=WorkflowAccepted,
             responses=problem_responses(400, 401, 413, 422, 503))
async def create_workflow(body: Annotated[WorkflowCreate, Body()], caller: CallerDep,
                          producer: WorkflowsDep, settings: SettingsDep, response: Response,
                          db: DbDep, gateway: GatewayDep,
                          start: Annotated[bool, Query(description=(
                              "true: start it at once; false: CREATED until POST .../start"))] = False,
                          idempotency_key: IdempotencyKey = None) -> WorkflowAccepted:
    """Create a workflow (a DAG of steps, each an ordinary task) and, with ``start=true``, start
    it. 422 names the step and the field of an invalid workflow (unknown task type, a cycle, a
    mapping naming no real step or field, parameters invalid once the mappings are applied);
    nothing is sent then. 202 once the broker has the request. With an ``Idempotency-Key``, a
    repeat names the same workflow (409 when the key named another definition)."""
    spec = _spec(body)
    workflow_id, replay = None, False
    if idempotency_key is not None:
        workflow_id = keyed_workflow_id(caller.tenant_id, idempotency_key, gateway.idempotency_secret)
        existing = await get_workflow(db, workflow_id, caller.tenant_id)
        if existing is not None:  # recorded: answer from it, send nothing
            if not _same_definition(existing, spec):
                raise ApiProblem(409, "idempotency-key-reused",
                                 "this Idempotency-Key was used for a different workflow; use a new key")
            replay = True
    if not replay:  # a repeat not recorded yet is sent again: the engine absorbs the same id
        event = await _send(producer.create, spec, start=start, workflow_id=workflow_id,
                            origin_zone=settings.origin_zone, origin_tenant_id=caller.tenant_id,
                            webhook_url=body.webhook_url, requested_by=f"api-key:{caller.key_id}")
        workflow_id = event.workflow_id
    links = WorkflowLinks(self_=workflow_path(workflow_id))
    response.headers["Location"] = links.self_
    return WorkflowAccepted(workflow_id=workflow_id, name=spec.name,
                            status="START_REQUESTED" if start else "CREATED",
                            step_ids=[s.id for s in spec.steps], idempotent_replay=replay, links=links)


@router.get("", response_model=WorkflowsPublic, responses=problem_responses(401, 403, 422))
async def list_workflows_route(query: Annotated[WorkflowListQuery, Query()], caller: CallerDep,
                               db: DbDep) -> WorkflowsPublic:
    """The caller's tenant's workflows, newest first, filtered and paged; an operator key lists
    every tenant's, or one tenant's with ``tenant``."""
    scope = list_scope(caller, query.tenant, "workflows")
    f = WorkflowFilter(status=query.status, name=query.name, origin_instance=query.origin_instance,
                       created_after=query.created_after, created_before=query.created_before)
    rows, total = await list_workflows(db, scope, f, page=query.page, page_size=query.page_size,
                                       sort_order=query.sort_order)
    return WorkflowsPublic.of(map(WorkflowSummary.from_row, rows), total, query)


@router.get("/{workflow_id:uuid}", response_model=WorkflowPublic,
            responses=problem_responses(401, 404, 422))
async def read_workflow(workflow_id: uuid.UUID, caller: CallerDep, pool: PoolDep,
                        notifier: NotifierDep, settings: SettingsDep,
                        wait: WaitQuery = 0.0) -> WorkflowPublic:
    """The workflow with every step's status, task id, attempt and result; with ``wait``, a
    long poll that answers when it has ended (COMPLETED, FAILED or CANCELLED). An operator key
    reads any tenant's."""
    wid = str(workflow_id)
    row = await read_row(get_workflow, wid, fleet_scope(caller), pool=pool, notifier=notifier,
                         settings=settings, wait=wait, ended=lambda r: r["status"] in ENDED,
                         may_end=ENDED.__contains__)
    if row is None:
        raise missing("workflow", wid, caller.tenant_id)
    return WorkflowPublic.from_row(row)


async def _own(wid: str, caller: Caller, db: Any) -> dict[str, Any]:
    """The caller's own workflow; 404 otherwise (also one accepted a moment ago that the
    processors have not recorded yet: it is readable within a moment, so a retry finds it)."""
    return await row_or_404(get_workflow, db, "workflow", wid, caller, hint=(
        " (one accepted a moment ago is readable once the processors recorded it; retry then)"))


def _command_route(action: str) -> None:
    async def command(workflow_id: uuid.UUID, caller: CallerDep, db: DbDep,
                      producer: WorkflowsDep) -> WorkflowActionAccepted:
        wid = str(workflow_id)
        row = await _own(wid, caller, db)
        if row["status"] not in _ALLOWED[action]:
            raise ApiProblem(409, "workflow-status-conflict",
                             f"workflow {wid} is {row['status']}; {action} needs it "
                             f"{' or '.join(sorted(_ALLOWED[action]))}")
        await _send(producer.command, wid, WorkflowCommand(action.upper()),
                    requested_by=f"api-key:{caller.key_id}")
        return WorkflowActionAccepted(workflow_id=wid, action=action, status=row["status"],  # type: ignore[arg-type]
                                      links=WorkflowLinks(self_=workflow_path(wid)))

    command.__name__ = f"{action}_workflow"
    command.__doc__ = {
        "start": "Start a CREATED workflow: its steps without dependencies are submitted.",
        "pause": "Pause a RUNNING workflow: running steps finish, no new step starts.",
        "resume": "Resume a PAUSED workflow: the steps that became ready are started.",
        "cancel": ("Cancel a workflow that has not ended: steps not started are not started, "
                   "running steps' tasks are cancelled; it ends CANCELLED."),
    }[action] + " 202 once the broker has the command; 409 when its status does not allow it."
    router.add_api_route(f"/{{workflow_id:uuid}}/{action}", command, methods=["POST"],
                         status_code=202, response_model=WorkflowActionAccepted,
                         name=command.__name__, summary=f"{action.capitalize()} a workflow",
                         responses=problem_responses(401, 404, 409, 413, 503))


for _action in ("start", "pause", "resume", "cancel"):
    _command_route(_action)


@router.post("/{workflow_id:uuid}/cleanup", response_model=WorkflowCleanup,
             responses=problem_responses(401, 404, 409, 503))
async def cleanup_workflow(workflow_id: uuid.UUID, caller: CallerDep, db: DbDep,
                           request: Request) -> WorkflowCleanup:
    """Delete the stored outputs of the workflow's steps (the files or objects their results
    name). Only an ended workflow (its steps' outputs are no longer another step's input), only
    the key's own tenant's, and only outputs its steps' tasks wrote under the tenant's folder of
    the results store; anything else is listed in ``not_deleted`` with why. Repeatable."""
    wid = str(workflow_id)
    row = await row_or_404(get_workflow, db, "workflow", wid, caller)
    if row["status"] not in ENDED:
        raise ApiProblem(409, "workflow-not-ended",
                         f"workflow {wid} is {row['status']}; clean up once it has ended (cancel it first)")
    try:
        deleted, refused = await run_in_threadpool(cleanup_outputs, storage_settings(request.app),
                                                   caller.tenant_id, row["steps"])
    except StorageFailure as exc:  # the store cannot be opened (an S3 client's setup)
        raise ApiProblem(503, "results-store-unavailable", f"the results store is unavailable: {exc}"[:500],
                         headers={"Retry-After": "1"}) from None
    return WorkflowCleanup(workflow_id=wid, deleted=deleted, not_deleted=refused)


# --------------------------------------------------------------------------- monitoring


@monitoring_router.get("", response_model=WorkflowMonitorPublic, responses=problem_responses(401))
async def monitor_workflows(caller: CallerDep, db: DbDep) -> WorkflowMonitorPublic:
    """The workflows not yet ended, each with its steps counted by status, and every workflow
    counted by status: the caller's tenant's (every tenant's for an operator key)."""
    active, by_status = await active_workflows(db, fleet_scope(caller))
    return WorkflowMonitorPublic(active=[WorkflowMonitorItem(
        workflow_id=str(r["workflow_id"]), name=r["name"], status=r["status"],
        tenant_id=r["origin_tenant_id"], steps=r["steps"], created_at=r["created_at"],
        updated_at=r["updated_at"]) for r in active], by_status=by_status)


@monitoring_router.get("/stats", response_model=WorkflowStatsPublic, responses=problem_responses(401))
async def monitor_workflow_stats(caller: CallerDep, db: DbDep) -> WorkflowStatsPublic:
    """Workflows by status, failure rate, p50/p95 run time, steps by status and task type: the
    caller's tenant's (every tenant's for an operator key)."""
    raw = await workflow_stats(db, fleet_scope(caller))
    by_status = raw["by_status"]
    ended = by_status.get("COMPLETED", 0) + by_status.get("FAILED", 0)
    return WorkflowStatsPublic(
        by_status=by_status, total=sum(by_status.values()),
        failure_rate=None if ended == 0 else by_status.get("FAILED", 0) / ended,
        p50_ms=raw["p50_ms"], p95_ms=raw["p95_ms"], steps_by_status=raw["steps_by_status"],
        steps_by_task_type=raw["steps_by_task_type"])
