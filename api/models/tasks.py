"""The task resource: TaskSubmit (in), TaskAccepted / TaskPublic / TasksPublic (out).

``TaskSubmit`` is the seed's flat shape, ``{"task_type": "GENERATION", "prompt": ..., ...}``: one
model per task type, built from that type's parameter model in ``schemas/task_params.py`` (so the
OpenAPI document lists every field and range), told apart by ``task_type``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, create_model, field_validator
from pydantic_core import PydanticCustomError

from api.models.pages import DEFAULT_PAGE_SIZE, Page, PageNumber, PageSize
from api.models.strict import strict_fields
from projection.db.queries import SORTABLE
from schemas.enums import ErrorCode, TaskStatus, TaskType
from schemas.records import WebhookUrl
from schemas.task_params import PARAMS_MODELS

API_PREFIX = "/api/v1"


def _object_not_text(cls: type, value: Any) -> Any:
    # The params models also read Avro records, where provider_config travels as JSON text, so
    # they take text; a request body says what it means: an object (as the document states).
    if isinstance(value, str):
        raise PydanticCustomError("dict_type", "Input should be a JSON object, not text holding one")
    return value


# entity_id and origin_version: one line of text (stored as PostgreSQL text, which cannot hold U+0000).
_TEXT = r"^[^\x00-\x1f\x7f]*$"


def _submit_model(task_type: TaskType) -> type[BaseModel]:
    params = PARAMS_MODELS[task_type]
    fields: dict[str, Any] = {n: (f.annotation, f) for n, f in params.model_fields.items()}
    fields.update(strict_fields(params))  # JSON numbers and booleans as they are, no coercion
    name = params.__name__.removesuffix("Params") + "TaskSubmit"
    return create_model(
        name,
        __config__=ConfigDict(extra="forbid", title=name),
        __doc__=f"Submit a {task_type.value} task: its parameters, flat, beside task_type.",
        __validators__={"object_not_text": field_validator("provider_config", mode="before")(
            classmethod(_object_not_text))},
        task_type=(Literal[task_type.value], ...),  # type: ignore[valid-type]
        webhook_url=(WebhookUrl | None, Field(default=None, description=(
            "POST every status change of this task here (http or https)."))),
        entity_id=(str | None, Field(default=None, min_length=1, max_length=255, pattern=_TEXT,
                                     description=(
            "Your business entity this task is about (an order, an asset...): opaque to us, "
            "returned on the task, every status event and every webhook."))),
        origin_version=(str | None, Field(default=None, min_length=1, max_length=200, pattern=_TEXT,
                                          description=(
            "The version of your system submitting the task: returned as origin.version and "
            "on every status event and webhook."))),
        **fields,
    )


SUBMIT_MODELS: dict[TaskType, type[BaseModel]] = {t: _submit_model(t) for t in TaskType}
TaskSubmit = Annotated[Union[tuple(SUBMIT_MODELS.values())], Field(discriminator="task_type")]  # type: ignore[valid-type]  # noqa: UP007


def task_path(task_id: str) -> str:
    return f"{API_PREFIX}/tasks/{task_id}"


class TaskLinks(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    self_: str = Field(alias="self")
    result: str
    events: str
    cancel: str

    @classmethod
    def of(cls, task_id: str) -> TaskLinks:
        base = task_path(task_id)
        return cls(self_=base, result=f"{base}/result", events=f"{base}/events",
                   cancel=f"{base}/cancel")


class TaskAccepted(BaseModel):
    task_id: str
    task_type: TaskType
    status: TaskStatus
    idempotent_replay: bool = Field(description="True when the Idempotency-Key named a task "
                                                "that was already submitted: nothing new was queued.")
    links: TaskLinks


class TaskErrorPublic(BaseModel):
    code: ErrorCode
    message: str | None
    retryable: bool = Field(
        default=False,
        description="true: the task waits QUEUED for its next attempt (`attempt`) after this "
                    "error, the message says when it runs; false: the task ended FAILED with it")


class TaskOrigin(BaseModel):
    instance: str | None
    zone: str | None
    tenant_id: str | None
    version: str | None = Field(default=None, description="origin_version: the submitting system's version")

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> TaskOrigin:
        """The origin columns of a read-model row (a task's, a workflow's, a generation's; only
        tasks record ``origin_version``)."""
        return cls(instance=row["origin_instance"], zone=row["origin_zone"],
                   tenant_id=row["origin_tenant_id"], version=row.get("origin_version"))


class TaskPublic(BaseModel):
    task_id: str
    task_type: TaskType
    status: TaskStatus
    attempt: int
    progress: float
    message: str | None
    params: dict[str, Any] | None = Field(description="null until the task record is projected")
    result: dict[str, Any] | None
    error: TaskErrorPublic | None
    origin: TaskOrigin
    entity_id: str | None = Field(default=None, description="the caller's business entity, as submitted")
    provider_type: str | None
    webhook_url: str | None
    generation_id: str | None
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    duration_ms: int | None = Field(description="PROCESSING to terminal, of the latest attempt")
    links: TaskLinks

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TaskPublic:
        task_id = str(row["task_id"])
        return cls(
            task_id=task_id, task_type=row["task_type"], status=row["status"],
            attempt=row["attempt"], progress=row["progress"], message=row["message"],
            params=row["params"], result=row["result"],
            error=None if row["error_code"] is None else TaskErrorPublic(
                code=row["error_code"], message=row["error_message"],
                retryable=row["status"] == TaskStatus.QUEUED.value),
            origin=TaskOrigin.of_row(row),
            entity_id=row.get("entity_id"),
            provider_type=row["provider_type"], webhook_url=row["webhook_url"],
            generation_id=None if row["generation_id"] is None else str(row["generation_id"]),
            created_at=row["created_at"], queued_at=row["queued_at"],
            started_at=row["started_at"], completed_at=row["completed_at"],
            updated_at=row["updated_at"], duration_ms=row["duration_ms"],
            links=TaskLinks.of(task_id),
        )


class TasksPublic(Page[TaskPublic]):
    total: int = Field(description="tasks matching the filters, over all pages")


class TaskResultPublic(BaseModel):
    task_id: str
    status: TaskStatus
    result: dict[str, Any]
    completed_at: datetime | None


class CancelAccepted(BaseModel):
    task_id: str
    status: TaskStatus = Field(description="the task's status when the cancel was accepted")
    cancel_requested: bool = True


# Filter values are compared with stored text, which never holds control characters (and
# PostgreSQL text cannot hold U+0000 at all: a 500 otherwise).
_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"


def _iso_text(value: Any) -> Any:
    """A query's date-time is ISO 8601 text: pydantic would also take a number of seconds
    (``created_before=0.5``), which the OpenAPI document's ``date-time`` does not allow."""
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError("must be an ISO 8601 date-time with a time zone, e.g. 2024-05-17T12:30:00Z")
    return value


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]")
QueryDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_text)]
"""A date-time query parameter: ISO 8601 text with a time zone, never a bare number."""


class TaskListQuery(BaseModel):
    """Filters, paging and sorting of GET /tasks; unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid")

    status: TaskStatus | None = None
    task_type: TaskType | None = None
    provider_type: str | None = Field(default=None, max_length=200, pattern=_NO_CONTROL)
    origin_instance: str | None = Field(default=None, max_length=200, pattern=_NO_CONTROL)
    origin_zone: str | None = Field(default=None, max_length=200, pattern=_NO_CONTROL)
    origin_tenant_id: str | None = Field(default=None, max_length=200, pattern=_NO_CONTROL)
    entity_id: str | None = Field(default=None, max_length=255, pattern=_NO_CONTROL,
                                  description="the tasks submitted for this entity_id")
    tenant: str | None = Field(default=None, max_length=200, pattern=_NO_CONTROL, description=(
        "operator keys only (403 for a tenant key): this tenant's tasks; without it an operator "
        "key lists every tenant's"))
    created_after: QueryDatetime | None = Field(default=None, description="inclusive")
    created_before: QueryDatetime | None = Field(default=None, description="exclusive")
    search: str | None = Field(default=None, min_length=1, max_length=36,
                               pattern=r"^[0-9a-fA-F-]+$", description="task id prefix")
    page: PageNumber = 1
    page_size: PageSize = DEFAULT_PAGE_SIZE
    sort_by: Literal[SORTABLE] = "created_at"  # type: ignore[valid-type]
    sort_order: Literal["asc", "desc"] = "desc"


class TaskEventPublic(BaseModel):
    """One SSE ``data:`` payload; the SSE ``id:`` is ``seq``."""

    seq: int
    event_id: str
    task_id: str
    attempt: int
    status: TaskStatus
    progress: float | None
    message: str | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    occurred_at: datetime

    @classmethod
    def from_row(cls, task_id: str, row: dict[str, Any]) -> TaskEventPublic:
        payload = row["payload"]
        return cls(seq=row["seq"], event_id=str(row["event_id"]), task_id=task_id,
                   attempt=row["attempt"], status=row["status"], progress=row["progress"],
                   message=payload.get("message"), result=payload.get("result"),
                   error=payload.get("error"), occurred_at=row["occurred_at"])
