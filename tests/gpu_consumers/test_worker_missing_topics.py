"""A worker started before ``computectl topics create`` (issue 15, item 9): one clear line
naming the missing topic and the command, no traceback, and it serves once the topics exist."""

from __future__ import annotations

import logging

import pytest

from gpu_consumers.storage import FileStore
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics
from tests.gpu_consumers.runtime_helpers import Running, Scripted, make_worker, submit
from tests.kafka_helpers import wait_for

pytestmark = pytest.mark.integration


def test_a_worker_waits_for_missing_topics_with_one_clear_line(
        kafka_settings: KafkaSettings, results_dir, caplog: pytest.LogCaptureFixture) -> None:
    kafka = kafka_settings  # a fresh prefix: no topic of it exists yet
    caplog.set_level(logging.INFO)
    handler = Scripted()
    running = Running(make_worker(kafka, handler, FileStore(results_dir)), max_tasks=1)

    def missing_lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if kafka.topics.control in r.getMessage()
                and "does not exist" in r.getMessage()]

    wait_for(missing_lines, what="the worker to say the control topic does not exist")
    assert "computectl topics create" in missing_lines()[0].getMessage()

    ensure_topics(kafka)
    [task_id] = submit(kafka, "ok")
    stats = running.join(60)

    assert stats.completed == 1 and [t for t, _ in handler.runs] == [task_id]
    tracebacks = [r for r in caplog.records if r.exc_info and r.name.startswith("gpu_consumers")]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]
