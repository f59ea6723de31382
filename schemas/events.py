"""The events on our topics, as pydantic models mirroring ``schemas/avro``.

Every event starts with an :class:`Envelope`. Task-submitted events (one model per task type)
go to the per-type task topics; :class:`StatusChanged` to the status topic;
:class:`CancelRequested` to the control topic; :class:`EvaluationRecorded` to the evaluations
topic. ``to_avro()`` / ``from_avro()`` convert to and from the dicts fastavro writes and reads
with :func:`load_avro_schema`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Self, cast

from pydantic import Field, model_validator

from schemas.enums import ErrorCode, EvaluationDecision, GenerationStrategy, GenerationType, TaskStatus, TaskType
from schemas.records import AVRO_INT_MAX, AVRO_LONG_MAX, AVRO_NAMESPACE, AvroRecord, Url, UtcDatetime, UuidStr, WebhookUrl, load_avro_schema
from schemas.task_params import (
    PARAMS_MODELS,
    SEED_MAX,
    SEED_MIN,
    BackgroundFixParams,
    BackgroundRemoveParams,
    DetailEnhancerParams,
    EditingParams,
    FaceEnhancerParams,
    GenerationParams,
    ImageAdjusterParams,
    LlmInteractionParams,
    ReferenceImage,
    RefineParams,
    TaskParams,
    VideoGenerationParams,
)

__all__ = [
    "AvroRecord",
    "BackgroundFixTaskSubmitted",
    "BackgroundRemoveTaskSubmitted",
    "CancelRequested",
    "DetailEnhancerTaskSubmitted",
    "EditingTaskSubmitted",
    "Envelope",
    "EvaluationRecorded",
    "FaceEnhancerTaskSubmitted",
    "GenerationTaskSubmitted",
    "ImageAdjusterTaskSubmitted",
    "LlmInteractionTaskSubmitted",
    "Orchestration",
    "ReferenceImage",
    "RefineTaskSubmitted",
    "ResultMetadata",
    "StatusChanged",
    "TASK_SUBMITTED_MODELS",
    "TaskError",
    "TaskResult",
    "TaskSubmitted",
    "VideoGenerationTaskSubmitted",
    "all_event_models",
    "load_avro_schema",
]

_NS = AVRO_NAMESPACE
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegativeInt = Annotated[int, Field(ge=0, le=AVRO_INT_MAX)]
PositiveInt = Annotated[int, Field(ge=1, le=AVRO_INT_MAX)]


class Envelope(AvroRecord):
    """Carried by every event: which task, which attempt, who wrote it, when."""

    avro_name: ClassVar[str] = f"{_NS}.Envelope"

    event_id: UuidStr
    task_id: UuidStr
    task_type: TaskType
    attempt: PositiveInt = 1
    occurred_at: UtcDatetime
    source: Annotated[str, Field(min_length=1)]
    origin_instance: str | None = None
    origin_zone: str | None = None
    origin_tenant_id: str | None = None
    origin_version: str | None = None
    entity_id: str | None = None

    @classmethod
    def new(
        cls,
        task_id: str | uuid.UUID,
        task_type: TaskType,
        source: str,
        attempt: int = 1,
        origin_instance: str | None = None,
        origin_zone: str | None = None,
        origin_tenant_id: str | None = None,
        origin_version: str | None = None,
        entity_id: str | None = None,
    ) -> Self:
        """An envelope for a new event: a fresh event_id, occurred_at = now (UTC)."""
        return cls(
            event_id=str(uuid.uuid4()),
            task_id=cast(str, task_id),  # pydantic checks it
            task_type=task_type,
            attempt=attempt,
            occurred_at=datetime.now(UTC),
            source=source,
            origin_instance=origin_instance,
            origin_zone=origin_zone,
            origin_tenant_id=origin_tenant_id,
            origin_version=origin_version,
            entity_id=entity_id,
        )


class Orchestration(AvroRecord):
    """The Generation a task belongs to and, for AGENTIC generations, the quality-loop settings."""

    avro_name: ClassVar[str] = f"{_NS}.Orchestration"

    generation_id: UuidStr
    prediction_index: NonNegativeInt
    generation_type: GenerationType
    strategy: GenerationStrategy
    shot_id: str | None = None
    max_attempts: PositiveInt = 3
    min_confidence_score: Fraction = 0.7
    evaluation_provider: Annotated[str, Field(min_length=1)] = "auto"
    # A workflow's step (docs/WORKFLOWS.md, "Events"): generation_id is the workflow id as well,
    # since it is what workers copy onto the task's status events.
    workflow_id: UuidStr | None = None
    step_id: str | None = None
    suppress_events: bool = False


class ResultMetadata(AvroRecord):
    avro_name: ClassVar[str] = f"{_NS}.ResultMetadata"

    model: str
    provider: str
    timing_ms: Annotated[int, Field(ge=0, le=AVRO_LONG_MAX)]
    width: PositiveInt | None = None
    height: PositiveInt | None = None
    fps: PositiveInt | None = None
    frame_count: PositiveInt | None = None
    duration: Annotated[float, Field(ge=0.0)] | None = None
    content_type: str | None = None
    # The configured provider that produced it, and why the fallback did (None: the primary);
    # gpu_consumers/providers.py, docs/WORKERS.md "Provider fallback".
    provider_name: str | None = None
    fallback_reason: str | None = None


class TaskResult(AvroRecord):
    """What a COMPLETED task produced."""

    avro_name: ClassVar[str] = f"{_NS}.TaskResult"

    result_image_url: Url | None = None
    result_video_url: Url | None = None
    result_text: str | None = None
    output_urls: list[Url] = Field(default_factory=list)
    seed: Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)] | None = None
    metadata: ResultMetadata


class TaskError(AvroRecord):
    """Why a FAILED task failed, or, on the QUEUED that starts a retry, why the attempt before did."""

    avro_name: ClassVar[str] = f"{_NS}.TaskError"

    code: ErrorCode
    message: str
    retryable: bool
    details: str | None = None

    @classmethod
    def of(cls, code: ErrorCode, message: str, details: str | None = None) -> Self:
        """An error whose ``retryable`` follows the seed's Retry column for ``code``."""
        return cls(code=code, message=message, retryable=code.retryable, details=details)


# --------------------------------------------------------------------------- task submitted


class TaskSubmitted(AvroRecord):
    """Base of the ten ``<Type>TaskSubmitted`` events; use a concrete subclass (or
    :meth:`new`, which picks it). ``TaskSubmitted.from_avro`` dispatches on the task type."""

    task_type: ClassVar[TaskType]

    envelope: Envelope
    params: TaskParams
    idempotency_key: str | None = None
    orchestration: Orchestration | None = None
    webhook_url: WebhookUrl | None = None

    @model_validator(mode="after")
    def _task_type_matches(self) -> Self:
        expected = type(self.params).task_type
        if self.envelope.task_type is not expected:
            raise ValueError(
                f"envelope.task_type is {self.envelope.task_type.value} but params are "
                f"{expected.value} parameters ({type(self).__name__})"
            )
        return self

    @classmethod
    def from_avro(cls, data: dict[str, Any]) -> Self:
        if cls is TaskSubmitted:
            task_type = TaskType(data["envelope"]["task_type"])
            return TASK_SUBMITTED_MODELS[task_type].model_validate(data)  # type: ignore[return-value]
        return cls.model_validate(data)

    @staticmethod
    def new(
        params: TaskParams,
        *,
        source: str,
        task_id: str | uuid.UUID | None = None,
        attempt: int = 1,
        idempotency_key: str | None = None,
        orchestration: Orchestration | None = None,
        webhook_url: str | None = None,
        origin_instance: str | None = None,
        origin_zone: str | None = None,
        origin_tenant_id: str | None = None,
        origin_version: str | None = None,
        entity_id: str | None = None,
    ) -> TaskSubmitted:
        """The submitted event for ``params`` (its type picks the model), with a new envelope;
        a new task id unless ``task_id`` is given (retries keep the id and raise ``attempt``)."""
        envelope = Envelope.new(
            task_id=task_id or str(uuid.uuid4()),
            task_type=params.task_type,
            source=source,
            attempt=attempt,
            origin_instance=origin_instance,
            origin_zone=origin_zone,
            origin_tenant_id=origin_tenant_id,
            origin_version=origin_version,
            entity_id=entity_id,
        )
        return TASK_SUBMITTED_MODELS[params.task_type](
            envelope=envelope,
            params=params,
            idempotency_key=idempotency_key,
            orchestration=orchestration,
            webhook_url=webhook_url,
        )


class GenerationTaskSubmitted(TaskSubmitted):
    task_type: ClassVar[TaskType] = TaskType.GENERATION
    avro_name: ClassVar[str] = f"{_NS}.GenerationTaskSubmitted"
    params: GenerationParams


class EditingTaskSubmitted(TaskSubmitted):
    task_type: ClassVar[TaskType] = TaskType.EDITING
    avro_name: ClassVar[str] = f"{_NS}.EditingTaskSubmitted"
    params: EditingParams


class RefineTaskSubmitted(TaskSubmitted):
    task_type: ClassVar[TaskType] = TaskType.REFINE
    avro_name: ClassVar[str] = f"{_NS}.RefineTaskSubmitted"
    params: RefineParams


class VideoGenerationTaskSubmitted(TaskSubmitted):
    task_type: ClassVar[TaskType] = TaskType.VIDEO_GENERATION
    avro_name: ClassVar[str] = f"{_NS}.VideoGenerationTaskSubmitted"
    params: VideoGenerationParams


class BackgroundFixTaskSubmitted(TaskSubmitted):
    task_type: ClassVar[TaskType] = TaskType.BACKGROUND_FIX
    avro_name: ClassVar[str] = f"{_NS}.BackgroundFixTaskSubmitted"
    params: BackgroundFixParams


class FaceEnhancerTaskSubmitted(TaskSubmitted):
    task_type: ClassVar[TaskType] = TaskType.FACE_ENHANCER
    avro_name: ClassVar[str] = f"{_NS}.FaceEnhancerTaskSubmitted"
    params: FaceEnhancerParams


class ImageAdjusterTaskSubmitted(TaskSubmitted):
    task_type: ClassVar[TaskType] = TaskType.IMAGE_ADJUSTER
    avro_name: ClassVar[str] = f"{_NS}.ImageAdjusterTaskSubmitted"
    params: ImageAdjusterParams


class DetailEnhancerTaskSubmitted(TaskSubmitted):
    task_type: ClassVar[TaskType] = TaskType.DETAIL_ENHANCER
    avro_name: ClassVar[str] = f"{_NS}.DetailEnhancerTaskSubmitted"
    params: DetailEnhancerParams


class BackgroundRemoveTaskSubmitted(TaskSubmitted):
    task_type: ClassVar[TaskType] = TaskType.BACKGROUND_REMOVE
    avro_name: ClassVar[str] = f"{_NS}.BackgroundRemoveTaskSubmitted"
    params: BackgroundRemoveParams


class LlmInteractionTaskSubmitted(TaskSubmitted):
    task_type: ClassVar[TaskType] = TaskType.LLM_INTERACTION
    avro_name: ClassVar[str] = f"{_NS}.LlmInteractionTaskSubmitted"
    params: LlmInteractionParams


TASK_SUBMITTED_MODELS: dict[TaskType, type[TaskSubmitted]] = {
    model.task_type: model
    for model in (
        GenerationTaskSubmitted,
        EditingTaskSubmitted,
        RefineTaskSubmitted,
        VideoGenerationTaskSubmitted,
        BackgroundFixTaskSubmitted,
        FaceEnhancerTaskSubmitted,
        ImageAdjusterTaskSubmitted,
        DetailEnhancerTaskSubmitted,
        BackgroundRemoveTaskSubmitted,
        LlmInteractionTaskSubmitted,
    )
}
assert TASK_SUBMITTED_MODELS.keys() == PARAMS_MODELS.keys() == set(TaskType)


# --------------------------------------------------------------------------- other events


class StatusChanged(AvroRecord):
    """A task moved in its lifecycle, or reported progress."""

    avro_name: ClassVar[str] = f"{_NS}.StatusChanged"

    envelope: Envelope
    status: TaskStatus
    progress: Fraction | None = None
    message: str | None = None
    result: TaskResult | None = None
    error: TaskError | None = None
    worker_id: str | None = None
    generation_id: str | None = None


class CancelRequested(AvroRecord):
    """Someone asked to cancel the task ``envelope.task_id``."""

    avro_name: ClassVar[str] = f"{_NS}.CancelRequested"

    envelope: Envelope
    reason: str | None = None
    requested_by: str | None = None


class EvaluationRecorded(AvroRecord):
    """The quality evaluation of one AGENTIC attempt (``envelope.task_id``) and the decision."""

    avro_name: ClassVar[str] = f"{_NS}.EvaluationRecorded"

    envelope: Envelope
    generation_id: str
    shot_id: str
    evaluated_attempt: PositiveInt
    score: Fraction
    reasons: list[str] = Field(default_factory=list)
    evaluator: str
    decision: EvaluationDecision | None = None
    accepted_task_id: str | None = None


def all_event_models() -> list[type[AvroRecord]]:
    """The 16 top-level event models (each the root of one ``.avsc`` written to a topic)."""
    from schemas.workflow_events import WORKFLOW_EVENT_MODELS  # it imports TaskResult from here

    return [*TASK_SUBMITTED_MODELS.values(), StatusChanged, CancelRequested, EvaluationRecorded,
            *WORKFLOW_EVENT_MODELS]
