"""GenerationRecord documents for the projection and API tests, built with the processors' own
models (``generations.flow``, ``generations.agentic``), and a producer of them."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from confluent_kafka import Producer

from generations.agentic import Completed, OrchestratedShot, ShotSettings, on_attempt_finished
from generations.catalog import Catalog, InMemoryCatalog
from generations.plan import GenerationPlan, plan_generation
from generations.record import (
    GENERATION_RECORD_CONTENT_TYPE,
    GenerationRecord,
    GenerationStatus,
    PredictionRecord,
    encode_record,
)
from schemas.enums import TaskStatus
from schemas.kafka_settings import KafkaSettings
from tests.projection.db.helpers import T0

SUBJECT_ID = "3f1a2b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b"
SCORES = (0.41, 0.62, 0.55)  # three attempts below 0.7: ACCEPT_BEST picks attempt 2
REASONS = (("blurry (sharpness 0.12)",), ("dull colours (colourfulness 0.05)",),
           ("overexposed: clipped exposure (exposure 0.00; 40% of pixels at 0 or 255)",))


def catalog() -> Catalog:
    store = InMemoryCatalog()
    store.add_subject("Anna", "loras/anna", 0.8, entry_id=SUBJECT_ID)
    return store


def plan(request: dict[str, Any] | None = None, *, seed: int | None = None, store: Catalog | None = None
         ) -> GenerationPlan:
    request = request or {"strategy": "GENERATE", "subject_id": SUBJECT_ID,
                          "shot_type_string": "full-body shot", "seed": 7}
    return plan_generation(request, store or catalog(), random.Random(seed))


def result(task_id: str) -> dict[str, Any]:
    return {"result_image_url": f"file:///out/{task_id}.png", "result_video_url": None,
            "result_text": None, "output_urls": [], "seed": None,
            "metadata": {"model": "classical", "provider": "classical", "timing_ms": 12,
                         "width": 64, "height": 64, "fps": None, "frame_count": None,
                         "duration": None}}


def base_record(p: GenerationPlan, *, tenant: str, version: int = 1,
                done: bool = False, at: datetime = T0) -> GenerationRecord:
    """A BASE generation: RUNNING with its tasks PROCESSING, or (``done``) all COMPLETED."""
    predictions = tuple(PredictionRecord(
        index=i, status=TaskStatus.COMPLETED if done else TaskStatus.PROCESSING,
        task_id=t.task_id, task_ids=(t.task_id,), result=result(t.task_id) if done else None,
        results={t.task_id: result(t.task_id)} if done else {}) for i, t in enumerate(p.tasks))
    if p.prompt_step is not None:
        predictions = tuple(PredictionRecord(index=i, task_id=w.task_id)
                            for i, w in enumerate(p.prompt_step.waiting))
    return GenerationRecord(
        generation_id=p.generation_id, plan=p, predictions=predictions,
        status=GenerationStatus.COMPLETED if done else GenerationStatus.RUNNING,
        prompt_task_id=None if p.prompt_step is None else p.prompt_step.task.task_id,
        origin_instance="api-test", origin_zone="zone-a", origin_tenant_id=tenant,
        webhook_url="https://hooks.example.com/g", version=version, created_at=at,
        updated_at=at + timedelta(seconds=version), completed_at=at + timedelta(seconds=version) if done else None)


def agentic_record(p: GenerationPlan, *, tenant: str, attempts: int = 3, version: int | None = None,
                   at: datetime = T0) -> GenerationRecord:
    """An AGENTIC generation of one prediction whose shot ran ``attempts`` attempts scored
    :data:`SCORES`; with three, the shot is done and attempt 2 (the best) is accepted."""
    [task] = p.tasks
    shot = OrchestratedShot.start(generation_id=p.generation_id, prediction_index=0, params=task.params,
                                  settings=ShotSettings.of(task.orchestration),
                                  shot_id=task.orchestration.shot_id, task_id=task.task_id)
    results: dict[str, Any] = {}
    for n in range(attempts):
        tid = shot.attempts[n].task_id
        results[tid] = result(tid)
        shot, _ = on_attempt_finished(shot, tid, Completed(SCORES[n], REASONS[n]))
    accepted = shot.accepted_task_id
    prediction = PredictionRecord(
        index=0, status=TaskStatus.COMPLETED if shot.done else TaskStatus.PROCESSING,
        task_id=accepted or shot.attempts[-1].task_id,
        task_ids=tuple(a.task_id for a in shot.attempts), shot=shot.to_dict(),
        result=results.get(accepted) if accepted else None, results=results)
    v = version if version is not None else 1 + 2 * attempts
    return GenerationRecord(
        generation_id=p.generation_id, plan=p, predictions=(prediction,),
        status=GenerationStatus.COMPLETED if shot.done else GenerationStatus.RUNNING,
        origin_tenant_id=tenant, version=v, created_at=at, updated_at=at + timedelta(seconds=v),
        completed_at=at + timedelta(seconds=v) if shot.done else None)


def produce_records(kafka: KafkaSettings, records: Iterable[GenerationRecord | bytes | None],
                    key: str | None = None) -> int:
    """Produce each record to the generations-state topic, keyed by its generation id (raw bytes
    or a tombstone with ``key``); wait for the acks."""
    producer = Producer({**kafka.producer_config(), "linger.ms": 0})
    count = 0
    for record in records:
        if isinstance(record, GenerationRecord):
            producer.produce(kafka.topics.generations_state, key=record.generation_id.encode(),
                             value=encode_record(record),
                             headers=[("content-type", GENERATION_RECORD_CONTENT_TYPE)])
        else:
            producer.produce(kafka.topics.generations_state, key=(key or "x").encode(), value=record)
        count += 1
    assert producer.flush(30) == 0, "records still undelivered after 30s"
    return count


def route_bodies(subject_id: str) -> dict[str, dict[str, Any]]:
    """A valid body for each generation route (path under /api/v1)."""
    image = "file:///in/look.png"
    return {
        "/api/v1/generations": {"subject_id": subject_id, "shot_type_string": "full-body shot",
                                "batch_size": 2, "seed": 5,
                                "webhook_url": "https://hooks.example.com/generations"},
        "/api/v1/generations/edit": {"base_img_path": image, "tool": "PRODUCT_ENHANCEMENT",
                                     "reference_images": ["file:///in/ref.png"]},
        "/api/v1/generations/refine": {"base_image_url": image, "batch_size": 2,
                                       "upscale_enabled": True, "upscale_factor": 2.0},
        "/api/v1/generations/video": {"base_image_url": image, "fps": 8, "duration": 2.0},
        "/api/v1/generations/background-fix": {"base_image_url": image,
                                               "background_prompt": "a sunny beach"},
        "/api/v1/generations/image-adjuster": {"base_image_url": image, "brightness": 0.2},
        "/api/v1/generations/face-fixer": {"base_image_url": image, "strength": 0.5,
                                           "generation_type": "AGENTIC", "max_attempts": 2},
    }
