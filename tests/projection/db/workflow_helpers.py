"""Workflow records for the read-model, API and CLI tests: the four-step fashion pipeline's spec,
WorkflowState documents as the processors' engine writes them, and producing them to the
compacted workflows-state topic (keyed by workflow id, Avro)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from confluent_kafka import Producer

from schemas.codec import EventCodec
from schemas.events import ResultMetadata, TaskResult
from schemas.kafka_settings import KafkaSettings
from schemas.workflow_events import WorkflowSpec, WorkflowState, WorkflowStepState, new_workflow_id
from tests.projection.db.helpers import T0


def pipeline_body(name: str = "fashion", **extra: Any) -> dict[str, Any]:
    """The four-step fashion pipeline as the API's body (examples/fashion_pipeline.yaml)."""
    return {
        "name": name, "origin_instance": "tests", "description": "four steps",
        "suppress_subtask_events": False, "config": {"collection": "summer"},
        "steps": [
            {"id": "generate", "task_type": "GENERATION",
             "config": {"prompt": "a red dress", "width": 64, "height": 96, "seed": 1}},
            {"id": "refine", "task_type": "REFINE", "depends_on": ["generate"],
             "config": {"upscale_factor": 2},
             "input_mappings": [{"from_step": "generate", "from_field": "result_image_url",
                                 "to_field": "base_image_url"}]},
            {"id": "cutout", "task_type": "BACKGROUND_REMOVE", "depends_on": ["refine"],
             "config": {"output_format": "png"},
             "input_mappings": [{"from_step": "refine", "from_field": "result_image_url",
                                 "to_field": "image_url"}]},
            {"id": "adjust", "task_type": "IMAGE_ADJUSTER", "depends_on": ["cutout"],
             "config": {"brightness": 0.1},
             "input_mappings": [{"from_step": "cutout", "from_field": "result_image_url",
                                 "to_field": "base_image_url"}]},
        ],
        **extra,
    }


def spec(**extra: Any) -> WorkflowSpec:
    return WorkflowSpec.model_validate(pipeline_body(**extra))


def result(url: str) -> TaskResult:
    return TaskResult(result_image_url=url, metadata=ResultMetadata(model="tiny", provider="local", timing_ms=5))


def state(s: WorkflowSpec, *, workflow_id: str | None = None, tenant: str = "acme",
          status: str = "RUNNING", version: int = 1, done: int = 0, running: bool = True,
          results: dict[str, str] | None = None, webhook_url: str | None = None,
          failed: bool = False) -> WorkflowState:
    """The workflow with its first ``done`` steps COMPLETED (result URLs from ``results``, by step
    id, else made up), the next RUNNING when ``running`` (FAILED when ``failed``), the rest
    PENDING; step task ids are uuid5 of (workflow, step), as stable as the engine's."""
    wid = workflow_id or new_workflow_id()
    at = T0 + timedelta(seconds=version)
    steps = []
    for i, step in enumerate(s.steps):
        task_id = str(uuid.uuid5(uuid.UUID(wid), step.id))
        if i < done:
            url = (results or {}).get(step.id, f"file:///results/{tenant}/{task_id}/1/output.png")
            steps.append(WorkflowStepState(step_id=step.id, task_type=step.task_type, status="COMPLETED",
                                           task_id=task_id, attempt=1, params=step.config,
                                           result=result(url), started_at=at, completed_at=at))
        elif i == done and (running or failed):
            steps.append(WorkflowStepState(
                step_id=step.id, task_type=step.task_type, status="FAILED" if failed else "RUNNING",
                task_id=task_id, attempt=1, params=step.config, started_at=at,
                error_code="INVALID_INPUT" if failed else None,
                error_message="the image is empty" if failed else None,
                completed_at=at if failed else None))
        else:
            steps.append(WorkflowStepState(step_id=step.id, task_type=step.task_type, status="PENDING"))
    ended = status in ("COMPLETED", "FAILED", "CANCELLED")
    return WorkflowState(workflow_id=wid, spec=s, status=status, steps=steps, version=version,
                         created_at=T0, updated_at=at, started_at=None if status == "CREATED" else T0,
                         completed_at=at if ended else None, origin_tenant_id=tenant,
                         webhook_url=webhook_url, failed_step=s.steps[done].id if failed else None)


def produce_states(kafka: KafkaSettings, states: Iterable[WorkflowState | bytes]) -> int:
    """Produce each to the workflows-state topic keyed by workflow id (bytes as they are, keyed
    by a made-up id); wait for the acknowledgements."""
    codec = EventCodec()
    producer = Producer({**kafka.producer_config(), "linger.ms": 0})
    count = 0
    for st in states:
        if isinstance(st, bytes):
            producer.produce(kafka.topics.workflows_state, key=str(uuid.uuid4()), value=st)
        else:
            producer.produce(kafka.topics.workflows_state, key=st.workflow_id, value=codec.encode(st))
        count += 1
    assert producer.flush(30) == 0, "records still undelivered after 30s"
    return count
