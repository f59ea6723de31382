"""The workflow resource: WorkflowCreate (in), WorkflowAccepted / WorkflowPublic / WorkflowsPublic
(out), and the monitoring views of workflows.

The body keeps the reference API's names and shapes (``name``, ``origin_instance``,
``description``, ``suppress_subtask_events``, ``config``, ``steps`` of ``{id, task_type, config,
depends_on, input_mappings: [{from_step, from_field, to_field}]}``), so an existing caller can
switch. These models check the shape only; what makes a DAG valid (unique ids, known task
types, no cycle, mappings naming real steps and fields, every step's parameters valid once its
mappings are applied) is the workflow domain's ``validate_workflow``, whose error names the step
and the field (docs/WORKFLOWS.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.models.pages import DEFAULT_PAGE_SIZE, CreatedOrder, Page, PageNumber, PageSize
from api.models.tasks import API_PREFIX, QueryDatetime, TaskOrigin, task_path
from schemas.enums import TaskType
from schemas.records import WebhookUrl

# A workflow's status (docs/WORKFLOWS.md): CREATED -> RUNNING <-> PAUSED -> COMPLETED | FAILED |
# CANCELLED.
WorkflowStatusName = Literal["CREATED", "RUNNING", "PAUSED", "COMPLETED", "FAILED", "CANCELLED"]
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
# Bounds of a body: a pipeline is a handful of steps; these keep one request one small record.
MAX_STEPS = 100
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class InputMappingCreate(BaseModel):
    """Copy ``from_field`` of the result of the finished step ``from_step`` into this step's
    parameter ``to_field`` (e.g. ``result_image_url`` -> ``base_image_url``)."""

    model_config = ConfigDict(extra="forbid")

    from_step: str = Field(min_length=1, max_length=100)
    from_field: str = Field(min_length=1, max_length=100, examples=["result_image_url"])
    to_field: str = Field(min_length=1, max_length=100, examples=["base_image_url"])


class WorkflowStepCreate(BaseModel):
    """One step: an ordinary task of ``task_type`` with ``config`` as its parameters, started
    once every step of ``depends_on`` has COMPLETED."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=_ID, description="unique within the workflow")
    # Checked with the rest of the workflow (a 422 naming the step), listed here for the document.
    task_type: str = Field(examples=["GENERATION"], json_schema_extra={"enum": [t.value for t in TaskType]},
                           description="one of the ten task types")
    config: dict[str, Any] = Field(default_factory=dict, description=(
        "the task's parameters; a field an input mapping fills may be left out"))
    depends_on: list[str] = Field(default_factory=list, max_length=MAX_STEPS)
    input_mappings: list[InputMappingCreate] = Field(default_factory=list, max_length=MAX_STEPS)


class WorkflowCreate(BaseModel):
    """POST /workflows: a DAG of steps (the reference API's body)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    origin_instance: str = Field(min_length=1, max_length=200, description=(
        "the calling instance; webhooks of a workflow without a webhook_url go to the URL "
        "configured for it (COMPUTE_WEBHOOK_ORIGIN_URLS)"))
    description: str | None = Field(default=None, max_length=2000)
    suppress_subtask_events: bool = Field(default=False, description=(
        "true: webhooks are sent for the workflow only, none for its steps' tasks"))
    config: dict[str, Any] = Field(default_factory=dict, description="the workflow's own settings, kept with it")
    steps: list[WorkflowStepCreate] = Field(min_length=1, max_length=MAX_STEPS)
    webhook_url: WebhookUrl | None = Field(default=None, description=(
        "POST the workflow's status changes here (an addition to the reference body)"))


def workflow_path(workflow_id: str) -> str:
    return f"{API_PREFIX}/workflows/{workflow_id}"


class WorkflowLinks(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    self_: str = Field(alias="self")
    tasks: list[str] = Field(default_factory=list, description="the steps' tasks started so far")


class WorkflowAccepted(BaseModel):
    workflow_id: str
    name: str
    status: Literal["CREATED", "START_REQUESTED"] = Field(description=(
        "CREATED: stored, not started (start=false; POST .../start starts it); START_REQUESTED: "
        "started with it, RUNNING once the processors applied it"))
    step_ids: list[str]
    idempotent_replay: bool = Field(default=False, description=(
        "True when the Idempotency-Key named a workflow already recorded: nothing new was sent."))
    links: WorkflowLinks


class WorkflowActionAccepted(BaseModel):
    workflow_id: str
    action: Literal["start", "pause", "resume", "cancel"]
    status: str = Field(description="the workflow's status when the request was accepted")
    links: WorkflowLinks


class StepErrorPublic(BaseModel):
    code: str | None
    message: str | None


class WorkflowStepPublic(BaseModel):
    id: str
    task_type: str
    status: str = Field(description="PENDING until started, then its task's status; SKIPPED or "
                                    "CANCELLED when the workflow ended before it")
    task_id: str | None
    attempt: int = Field(description="the attempt of its task (0: not started)")
    depends_on: list[str]
    input_mappings: list[dict[str, Any]]
    config: dict[str, Any]
    params: dict[str, Any] | None = Field(description="what its task was submitted with (mappings applied)")
    result: dict[str, Any] | None
    error: StepErrorPublic | None
    started_at: datetime | None
    completed_at: datetime | None


class WorkflowSummary(BaseModel):
    workflow_id: str
    name: str
    description: str | None
    status: str
    suppress_subtask_events: bool
    config: dict[str, Any]
    origin: TaskOrigin
    webhook_url: str | None
    message: str | None
    steps_total: int
    steps_completed: int
    version: int = Field(description="grows with every change of the workflow's record")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    links: WorkflowLinks

    @classmethod
    def _fields(cls, row: dict[str, Any], task_ids: list[str]) -> dict[str, Any]:
        wid = str(row["workflow_id"])
        return dict(
            workflow_id=wid, name=row["name"], description=row["description"],
            status=row["status"], suppress_subtask_events=row["suppress_subtask_events"],
            config=row["config"],
            origin=TaskOrigin.of_row(row),
            webhook_url=row["webhook_url"], message=row["message"],
            steps_total=row["steps_total"], steps_completed=row["steps_completed"],
            version=row["version"], created_at=row["created_at"], updated_at=row["updated_at"],
            started_at=row["started_at"], completed_at=row["completed_at"],
            links=WorkflowLinks(self_=workflow_path(wid),
                                tasks=[task_path(t) for t in task_ids]),
        )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> WorkflowSummary:
        return cls(**cls._fields(row, []))


class WorkflowPublic(WorkflowSummary):
    failed_step: str | None = Field(description="the step whose failure failed the workflow (FAILED)")
    steps: list[WorkflowStepPublic]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> WorkflowPublic:
        steps = [_step(s) for s in row["steps"]]
        failed = next((s.id for s in steps if s.status == "FAILED"), None)
        return cls(**cls._fields(row, [s.task_id for s in steps if s.task_id]), steps=steps,
                   failed_step=failed if row["status"] == "FAILED" else None)


def _step(s: dict[str, Any]) -> WorkflowStepPublic:
    error = None
    if s["error_code"] is not None or s["error_message"] is not None:
        error = StepErrorPublic(code=s["error_code"], message=s["error_message"])
    return WorkflowStepPublic(
        id=s["step_id"], task_type=s["task_type"], status=s["status"],
        task_id=None if s["task_id"] is None else str(s["task_id"]), attempt=s["attempt"],
        depends_on=list(s["depends_on"]), input_mappings=list(s["input_mappings"]),
        config=s["config"], params=s["params"], result=s["result"], error=error,
        started_at=s["started_at"], completed_at=s["completed_at"])


class WorkflowsPublic(Page[WorkflowSummary]):
    total: int = Field(description="workflows matching the filters, over all pages")


class WorkflowListQuery(BaseModel):
    """Filters and paging of GET /workflows (as for tasks); unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid")

    status: WorkflowStatusName | None = None
    name: str | None = Field(default=None, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")
    origin_instance: str | None = Field(default=None, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")
    tenant: str | None = Field(default=None, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$", description=(
        "operator keys only (403 for a tenant key): this tenant's workflows; without it an "
        "operator key lists every tenant's"))
    created_after: QueryDatetime | None = Field(default=None, description="inclusive")
    created_before: QueryDatetime | None = Field(default=None, description="exclusive")
    page: PageNumber = 1
    page_size: PageSize = DEFAULT_PAGE_SIZE
    sort_order: CreatedOrder = "desc"


class WorkflowCleanup(BaseModel):
    workflow_id: str
    deleted: list[str] = Field(description="the stored outputs deleted (URLs)")
    not_deleted: list[dict[str, str]] = Field(description=(
        "outputs left alone, each with why (outside the results store or the workflow's tasks)"))


# --------------------------------------------------------------------------- monitoring


class WorkflowMonitorItem(BaseModel):
    workflow_id: str
    name: str
    status: str
    tenant_id: str | None
    steps: dict[str, int] = Field(description="the workflow's steps by status")
    created_at: datetime
    updated_at: datetime


class WorkflowMonitorPublic(BaseModel):
    """The workflows not yet ended (CREATED, RUNNING, PAUSED), most recently changed first."""

    active: list[WorkflowMonitorItem]
    by_status: dict[str, int] = Field(description="every workflow in scope, by status")


class WorkflowStatsPublic(BaseModel):
    by_status: dict[str, int]
    total: int
    failure_rate: float | None = Field(description="FAILED / (COMPLETED + FAILED); null before any ended")
    p50_ms: float | None = Field(description="median run time (started to ended) of ended workflows")
    p95_ms: float | None
    steps_by_status: dict[str, int]
    steps_by_task_type: dict[str, int]
