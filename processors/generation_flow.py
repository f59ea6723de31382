"""A generation's progress, as pure functions: no I/O, no clock (``now`` is passed in).

The processors' orchestrator (``processors/orchestrator.py``) keeps one :class:`GenerationRecord`
per generation id in a Faust table and calls these functions with what arrives on the
generations topic; it carries out the :data:`Effect` list each returns, in order:

* :func:`start` — a :class:`producers.generations.GenerationRequested` arrived: the record is
  created and the plan's first tasks (or its prompt task) are submitted;
* :func:`on_task_final` — a task of the generation reached its *final* state (COMPLETED,
  CANCELLED, or FAILED with no retry left; the fold forwards those). What it means depends on the
  task's role: the prompt task (→ submit the waiting GENERATION tasks), an attempt of a
  prediction (BASE: the prediction's outcome; AGENTIC COMPLETED: :class:`Evaluate` it; AGENTIC
  FAILED: :func:`processors.agentic.on_attempt_finished` with ``Failed``), a vision-language
  judge's task (→ :class:`ParseJudgement`), a follow-up (DETAIL_ENHANCER after
  PRODUCT_ENHANCEMENT: the prediction's final result);
* :func:`on_evaluation` — the evaluator scored an attempt: :func:`processors.agentic.on_attempt_finished`
  with ``Completed(score, reasons)``; its action becomes an :class:`EmitEvaluation` (the
  evaluation stream, ``<prefix>.evaluations``) and a :class:`SubmitTask` (RETRY), or the
  prediction's outcome (ACCEPT / ACCEPT_BEST / GIVE_UP);
* :func:`start_judging` — the evaluator is a task evaluator (``vlm``): its judge task is
  submitted and the attempt waits for it.

Every function is idempotent: an input already applied (at-least-once delivery replays them)
returns the record unchanged (the same object) and no effects. A record that changed has
``version`` + 1 and ``updated_at = now``.

Generation status (:class:`GenerationStatus`): RUNNING from the start; when every prediction is
terminal: COMPLETED if at least one prediction COMPLETED, CANCELLED if every prediction was
cancelled, else FAILED. ``completed_at`` is set then.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, JsonValue

from processors.evaluators.base import Evaluation, EvaluationContext
from producers.generations import GenerationPlan, GenerationRequested, PlannedTask
from schemas.enums import TaskStatus
from schemas.events import EvaluationRecorded
from schemas.task_params import LlmInteractionParams
from state.lifecycle import TaskState

GENERATION_RECORD_FORMAT = 1
GENERATION_RECORD_CONTENT_TYPE = b"application/json; format=compute.GenerationRecord/1"


class GenerationStatus(StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PredictionRecord(_Frozen):
    """One prediction of a generation."""

    index: int
    # PENDING until its first task is submitted (a prompt step), PROCESSING while any of its
    # tasks runs or is evaluated, then COMPLETED / FAILED / CANCELLED.
    status: TaskStatus = TaskStatus.PENDING
    task_id: str | None = None  # the task whose result is (or will be) the prediction's
    task_ids: tuple[str, ...] = ()  # every task run for it, in order: attempts, then follow-up
    shot: dict[str, JsonValue] | None = None  # AGENTIC: OrchestratedShot.to_dict()
    follow_up_task_id: str | None = None
    result: dict[str, JsonValue] | None = None  # the TaskResult JSON of the task above
    error_code: str | None = None
    error_message: str | None = None


class GenerationRecord(_Frozen):
    """The orchestrator table's value and the ``generations.state`` document (JSON)."""

    format: int = GENERATION_RECORD_FORMAT
    generation_id: str
    plan: GenerationPlan
    status: GenerationStatus = GenerationStatus.RUNNING
    predictions: tuple[PredictionRecord, ...]
    prompt_task_id: str | None = None
    prompt: str | None = None  # the prompt the GENERATION tasks got (after a prompt step)
    judges: dict[str, str] = {}  # judge task id -> the attempt task id it judges
    origin_instance: str | None = None
    origin_zone: str | None = None
    origin_tenant_id: str | None = None
    webhook_url: str | None = None
    version: int = 1
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None


# --------------------------------------------------------------------------- effects


@dataclass(frozen=True)
class SubmitTask:
    """Produce this task (``TaskProducer.submit`` with its id and orchestration)."""

    task: PlannedTask


@dataclass(frozen=True)
class Evaluate:
    """Score attempt ``task_id``'s image with the evaluator ``provider`` names, then call
    :func:`on_evaluation` (an in-process evaluator) or :func:`start_judging` (a task evaluator)."""

    task_id: str
    image_url: str
    provider: str
    context: EvaluationContext


@dataclass(frozen=True)
class ParseJudgement:
    """The judge of attempt ``task_id`` answered ``text``: parse it with the ``provider``'s
    evaluator and call :func:`on_evaluation`."""

    task_id: str
    text: str
    provider: str
    context: EvaluationContext


@dataclass(frozen=True)
class EmitEvaluation:
    """Produce this event to the evaluations topic (keyed by its task id)."""

    event: EvaluationRecorded


Effect = SubmitTask | Evaluate | ParseJudgement | EmitEvaluation


# --------------------------------------------------------------------------- the functions


def start(request: GenerationRequested, *, now: datetime) -> tuple[GenerationRecord, list[Effect]]:
    raise NotImplementedError


def on_task_final(record: GenerationRecord, state: TaskState, *, now: datetime
                  ) -> tuple[GenerationRecord, list[Effect]]:
    raise NotImplementedError


def on_evaluation(record: GenerationRecord, task_id: str, evaluation: Evaluation, *, now: datetime
                  ) -> tuple[GenerationRecord, list[Effect]]:
    raise NotImplementedError


def start_judging(record: GenerationRecord, task_id: str, params: LlmInteractionParams, *,
                  now: datetime) -> tuple[GenerationRecord, list[Effect]]:
    raise NotImplementedError


def encode_record(record: GenerationRecord) -> bytes:
    return record.model_dump_json().encode()


def decode_record(document: bytes) -> GenerationRecord:
    return GenerationRecord.model_validate_json(document)
