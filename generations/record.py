"""A generation's record: what the processors' orchestrator keeps per generation id, publishes
on the compacted ``<prefix>.generations.state`` topic, and the read model projects.

JSON (``encode_record`` / ``decode_record``): the plan, the generation's status, each prediction
with its tasks, AGENTIC shot and results. ``generations/flow.py`` moves it; this
module is only its shape, so readers (``projection/db/generation_projection.py``) need nothing else.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import JsonValue

from generations.plan import GenerationPlan
from generations.requests import FrozenModel
from schemas.enums import TaskStatus

GENERATION_RECORD_FORMAT = 1
GENERATION_RECORD_CONTENT_TYPE = b"application/json; format=compute.GenerationRecord/1"


class GenerationStatus(StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class PredictionRecord(FrozenModel):
    """One prediction of a generation."""

    index: int
    # PENDING until its first task is submitted (a prompt step), PROCESSING while any of its
    # tasks runs or is evaluated, then COMPLETED / FAILED / CANCELLED.
    status: TaskStatus = TaskStatus.PENDING
    # The task whose result is (or will be) the prediction's: the latest attempt while the shot
    # runs, the accepted attempt once decided (also while its follow-up runs), the follow-up once
    # that COMPLETED.
    task_id: str | None = None
    task_ids: tuple[str, ...] = ()  # every task run for it, in order: attempts, then follow-up
    shot: dict[str, JsonValue] | None = None  # AGENTIC: OrchestratedShot.to_dict()
    follow_up_task_id: str | None = None
    # The TaskResult JSON of ``task_id`` (COMPLETED; while a follow-up runs, the result it works on).
    result: dict[str, JsonValue] | None = None
    # task id -> TaskResult JSON of every COMPLETED task of the prediction: the accepted attempt
    # is named only after later attempts ran, so each attempt's result is kept until then.
    results: dict[str, dict[str, JsonValue]] = {}
    error_code: str | None = None
    error_message: str | None = None


class GenerationRecord(FrozenModel):
    """The orchestrator table's value and the ``generations.state`` document (JSON)."""

    format: int = GENERATION_RECORD_FORMAT
    generation_id: str
    plan: GenerationPlan
    status: GenerationStatus = GenerationStatus.RUNNING
    predictions: tuple[PredictionRecord, ...]
    prompt_task_id: str | None = None
    prompt: str | None = None  # the prompt the GENERATION tasks got (after a prompt step)
    message: str | None = None  # a note for the user, e.g. that the template prompt was used
    judges: dict[str, str] = {}  # judge task id -> the attempt task id it judges
    # When a GenerationCancelRequested was applied (the record ended with it; see generation_flow.cancel).
    cancel_requested_at: datetime | None = None
    origin_instance: str | None = None
    origin_zone: str | None = None
    origin_tenant_id: str | None = None
    webhook_url: str | None = None
    version: int = 1
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None


def encode_record(record: GenerationRecord) -> bytes:
    return record.model_dump_json().encode()


def decode_record(document: bytes) -> GenerationRecord:
    return GenerationRecord.model_validate_json(document)
