"""The workflow events, as pydantic models mirroring ``schemas/avro/compute.events.Workflow*``.

* :class:`WorkflowSpec` (with :class:`WorkflowStep` and :class:`InputMapping`): a workflow as its
  caller describes it, the reference API's ``POST /api/v1/workflows`` body, field for field;
* :class:`WorkflowRequested` and :class:`WorkflowCommandRequested`: what the API writes to
  ``<prefix>.workflows`` (keyed by workflow id);
* :class:`WorkflowState` (with :class:`WorkflowStepState`): the latest state of a workflow, on the
  compacted ``<prefix>.workflows.state`` topic.

The models check each field alone; whether a spec makes a valid DAG (ids, cycles, mappings,
parameters) is ``workflows.spec.validate_workflow``'s, above this layer.

**Workflow ids are UUIDs of version 8** (RFC 9562's custom version; :func:`new_workflow_id`).
A step is an ordinary task whose ``Orchestration.generation_id`` is its workflow id, because
that is the id workers copy onto the task's status events (so they need no change). Generation
ids are version 4, so the processors' lifecycle fold tells a workflow's task from a generation's
by the id alone (:func:`is_workflow_id`) and sends its final state to the workflows topic.
"""

from __future__ import annotations

import os
import uuid
from enum import Enum
from typing import Annotated, ClassVar

from pydantic import Field

from schemas.enums import ErrorCode, TaskType
from schemas.events import TaskResult
from schemas.records import AVRO_INT_MAX, AVRO_LONG_MAX, AVRO_NAMESPACE, AvroRecord, JsonObject, UtcDatetime, UuidStr, WebhookUrl

_NS = AVRO_NAMESPACE
Name = Annotated[str, Field(min_length=1)]
_WORKFLOW_UUID_VERSION = 8
# The version digit's place in the 8-4-4-4-12 text: a check on the fold's path that parses nothing.
_VERSION_CHAR = 14


def new_workflow_id() -> str:
    """A new workflow id: 122 random bits in a version-8 UUID."""
    bits = int.from_bytes(os.urandom(16), "big")
    # uuid.UUID(version=8) needs Python 3.12: set the variant (RFC) and version bits by hand.
    bits &= ~((0xC000 << 48) | (0xF000 << 64))
    bits |= (0x8000 << 48) | (_WORKFLOW_UUID_VERSION << 76)
    return str(uuid.UUID(int=bits))


def is_workflow_id(value: str | None) -> bool:
    """Whether ``value`` (a task's ``generation_id``) names a workflow rather than a generation."""
    return value is not None and len(value) == 36 and value[_VERSION_CHAR] == "8"



class WorkflowStatus(str, Enum):
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED)


class WorkflowStepStatus(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"

    @property
    def is_terminal(self) -> bool:
        return self not in (WorkflowStepStatus.PENDING, WorkflowStepStatus.RUNNING)


class WorkflowCommand(str, Enum):
    START = "START"
    PAUSE = "PAUSE"
    RESUME = "RESUME"
    CANCEL = "CANCEL"


class InputMapping(AvroRecord):
    """Copy ``from_field`` of step ``from_step``'s result into this step's ``to_field``."""

    avro_name: ClassVar[str] = f"{_NS}.InputMapping"

    from_step: Name
    from_field: Name
    to_field: Name


class WorkflowStep(AvroRecord):
    avro_name: ClassVar[str] = f"{_NS}.WorkflowStep"

    id: Name
    task_type: TaskType
    config: JsonObject | None = None
    depends_on: list[str] = Field(default_factory=list)
    input_mappings: list[InputMapping] = Field(default_factory=list)


class WorkflowSpec(AvroRecord):
    avro_name: ClassVar[str] = f"{_NS}.WorkflowSpec"

    name: Name
    origin_instance: Name
    description: str | None = None
    suppress_subtask_events: bool = False
    config: JsonObject | None = None
    steps: list[WorkflowStep]


class WorkflowRequested(AvroRecord):
    avro_name: ClassVar[str] = f"{_NS}.WorkflowRequested"

    event_id: UuidStr
    workflow_id: UuidStr
    occurred_at: UtcDatetime
    source: Name
    spec: WorkflowSpec
    start: bool = False
    origin_zone: str | None = None
    origin_tenant_id: str | None = None
    webhook_url: WebhookUrl | None = None
    requested_by: str | None = None


class WorkflowCommandRequested(AvroRecord):
    avro_name: ClassVar[str] = f"{_NS}.WorkflowCommandRequested"

    event_id: UuidStr
    workflow_id: UuidStr
    occurred_at: UtcDatetime
    source: Name
    command: WorkflowCommand
    reason: str | None = None
    requested_by: str | None = None


class WorkflowStepState(AvroRecord):
    avro_name: ClassVar[str] = f"{_NS}.WorkflowStepState"

    step_id: Name
    task_type: TaskType
    status: WorkflowStepStatus
    task_id: UuidStr | None = None
    attempt: Annotated[int, Field(ge=0, le=AVRO_INT_MAX)] = 0
    params: JsonObject | None = None
    result: TaskResult | None = None
    error_code: ErrorCode | None = None
    error_message: str | None = None
    started_at: UtcDatetime | None = None
    completed_at: UtcDatetime | None = None


class WorkflowState(AvroRecord):
    avro_name: ClassVar[str] = f"{_NS}.WorkflowState"

    workflow_id: UuidStr
    spec: WorkflowSpec
    status: WorkflowStatus
    steps: list[WorkflowStepState]
    version: Annotated[int, Field(ge=1, le=AVRO_LONG_MAX)]
    created_at: UtcDatetime
    updated_at: UtcDatetime
    started_at: UtcDatetime | None = None
    completed_at: UtcDatetime | None = None
    message: str | None = None
    failed_step: str | None = None
    origin_zone: str | None = None
    origin_tenant_id: str | None = None
    webhook_url: WebhookUrl | None = None

    def step(self, step_id: str) -> WorkflowStepState:
        """The state of step ``step_id``; KeyError when the workflow has none."""
        for step in self.steps:
            if step.step_id == step_id:
                return step
        raise KeyError(step_id)


WORKFLOW_EVENT_MODELS: tuple[type[AvroRecord], ...] = (WorkflowRequested, WorkflowCommandRequested, WorkflowState)
