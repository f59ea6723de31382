"""Scripted status events and task records for the processor tests (no worker needed)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from producers.examples import SEED_EXAMPLES
from schemas.enums import ErrorCode, TaskStatus, TaskType
from schemas.events import Envelope, ResultMetadata, StatusChanged, TaskError, TaskResult, TaskSubmitted
from schemas.task_params import PARAMS_MODELS

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def status(task_id: str, st: TaskStatus, at: datetime, *, attempt: int = 1,
           task_type: TaskType = TaskType.GENERATION, progress: float | None = None,
           error: ErrorCode | None = None, result: bool = False,
           event_id: str | None = None) -> StatusChanged:
    env = Envelope(event_id=event_id or str(uuid.uuid4()), task_id=task_id, task_type=task_type,
                   attempt=attempt, occurred_at=at, source="test")
    return StatusChanged(
        envelope=env, status=st, progress=progress,
        error=TaskError.of(error, f"{error.value} in a test") if error else None,
        result=TaskResult(result_image_url=f"file:///results/{task_id}.png", seed=7,
                          metadata=ResultMetadata(model="m", provider="p", timing_ms=10))
        if result else None,
    )


def submitted(task_id: str, task_type: TaskType = TaskType.GENERATION, attempt: int = 1) -> TaskSubmitted:
    params = PARAMS_MODELS[task_type].model_validate(SEED_EXAMPLES[task_type])
    return TaskSubmitted.new(params, source="test", task_id=task_id, attempt=attempt)


def lifecycle(task_id: str, start: datetime, rng: random.Random) -> list[StatusChanged]:
    """One task's events in occurrence order: a normal run, a retried failure, a cancel, or a
    run still in progress, chosen by ``rng``."""
    t = [start + timedelta(seconds=i) for i in range(12)]
    head = [status(task_id, TaskStatus.PENDING, t[0]), status(task_id, TaskStatus.QUEUED, t[1])]
    run = [status(task_id, TaskStatus.PROCESSING, t[2], progress=0.0),
           status(task_id, TaskStatus.PROCESSING, t[3], progress=0.5)]
    kind = rng.choice(["completed", "retried", "cancelled", "running", "failed"])
    if kind == "completed":
        return [*head, *run, status(task_id, TaskStatus.COMPLETED, t[4], result=True)]
    if kind == "retried":
        return [*head, *run,
                status(task_id, TaskStatus.QUEUED, t[4], attempt=2, error=ErrorCode.PROVIDER_ERROR),
                status(task_id, TaskStatus.PROCESSING, t[5], attempt=2, progress=0.2),
                status(task_id, TaskStatus.COMPLETED, t[6], attempt=2, result=True)]
    if kind == "cancelled":
        return [*head, status(task_id, TaskStatus.CANCELLED, t[2])]
    if kind == "failed":
        return [*head, run[0], status(task_id, TaskStatus.FAILED, t[3], error=ErrorCode.INVALID_INPUT)]
    return [*head, *run]


def shuffled_with_duplicates(events: list[StatusChanged], rng: random.Random) -> list[StatusChanged]:
    """The events out of order, some of them twice (a producer's retry, a worker's replay)."""
    out = list(events) + [e for e in events if rng.random() < 0.3]
    rng.shuffle(out)
    return out
