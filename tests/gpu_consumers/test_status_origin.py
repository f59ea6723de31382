"""A worker's status events name the worker, not the submitter (issue 17): origin_instance is the
worker id, origin_zone the worker's WORKER_ORIGIN_ZONE; the task's tenant, origin_version and
entity_id are carried. Against the real broker."""

from __future__ import annotations

import pytest

from gpu_consumers.storage import FileStore
from producers.submit import Origin, TaskProducer
from schemas.enums import TaskStatus
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics
from tests.gpu_consumers.runtime_helpers import TYPE, Running, Scripted, make_worker
from tests.kafka_helpers import StatusLog

pytestmark = pytest.mark.integration


@pytest.fixture
def kafka(kafka_settings: KafkaSettings) -> KafkaSettings:
    settings = kafka_settings.model_copy(update={"partitions": 2})
    ensure_topics(settings)
    return settings


def test_worker_statuses_name_the_worker_and_carry_the_tasks_origin_version_and_entity(kafka, results_dir):
    origin = Origin(instance="backend-7", zone="eu-1", tenant_id="acme", version="backend-4.2.1")
    with TaskProducer(kafka, origin=origin) as producer:
        task_id = producer.submit(TYPE, {"base_image_url": "file:///nowhere.png", "prompt": "steps:2:0.01"},
                                  entity_id="order-42")
    worker = make_worker(kafka, Scripted(), FileStore(results_dir), origin_zone="gpu-zone-b")
    log = StatusLog(kafka)
    try:
        assert Running(worker, max_tasks=1).join().completed == 1
        log.wait_terminal(task_id)
        events = log.events[task_id]
    finally:
        log.close()
    by_producer = [e for e in events if e.status in (TaskStatus.PENDING, TaskStatus.QUEUED)]
    by_worker = [e for e in events if e.worker_id is not None]
    assert by_producer and {e.envelope.origin_instance for e in by_producer} == {"backend-7"}
    assert [e.status for e in by_worker][-1] is TaskStatus.COMPLETED
    for e in by_worker:
        env = e.envelope
        assert (env.origin_instance, env.origin_zone) == (worker.worker_id, "gpu-zone-b")
        assert (env.origin_tenant_id, env.origin_version, env.entity_id) == ("acme", "backend-4.2.1", "order-42")
