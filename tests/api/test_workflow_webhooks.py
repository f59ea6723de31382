"""Workflow webhooks on the real Kafka and PostgreSQL: each status change of a workflow (RUNNING,
PAUSED, RUNNING again, COMPLETED) is POSTed, signed, once, with its own event id; the tasks of
a workflow with ``suppress_subtask_events`` send no webhook while an ordinary task does."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest

from projection.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, WebhookSettings, verify, workflow_event_id
from schemas.enums import GenerationStrategy, GenerationType, TaskType
from schemas.events import Orchestration
from schemas.kafka_settings import KafkaSettings
from tests.api.helpers import webhook_outbox
from tests.api.test_webhooks import SECRET, Receiver, projecting
from tests.projection.db import workflow_helpers as wh
from tests.projection.db.helpers import T0, lifecycle, produce, submitted, task_row, wait_for

pytestmark = pytest.mark.integration


def test_every_workflow_status_change_is_sent_once_with_its_own_event_id(
        db_url: str, kafka_settings: KafkaSettings) -> None:
    receiver = Receiver([])
    spec = wh.spec()
    first = wh.state(spec, version=1, webhook_url=receiver.url)
    wid = first.workflow_id
    versions = [first,
                wh.state(spec, workflow_id=wid, version=2, done=1, webhook_url=receiver.url),  # same status
                wh.state(spec, workflow_id=wid, version=3, status="PAUSED", done=2, running=False,
                         webhook_url=receiver.url),
                wh.state(spec, workflow_id=wid, version=4, done=2, webhook_url=receiver.url),
                wh.state(spec, workflow_id=wid, version=5, status="COMPLETED", done=4,
                         webhook_url=receiver.url)]
    settings = WebhookSettings(secret=SECRET, allow_private_networks=True)
    with projecting(db_url, kafka_settings, settings):
        wh.produce_states(kafka_settings, [*versions, versions[1]])  # a duplicate too
        wait_for(lambda: len(receiver.delivered()) == 4, what="four workflow webhooks")
        wait_for(lambda: all(o["state"] == "delivered" for o in webhook_outbox(db_url, "workflow", wid)),
                 what="the outbox delivered")
    bodies = receiver.delivered()
    assert [(b["status"], b["previous_status"], b["version"]) for b in bodies] == [
        ("RUNNING", None, 1), ("PAUSED", "RUNNING", 3), ("RUNNING", "PAUSED", 4), ("COMPLETED", "RUNNING", 5)]
    assert [b["event_id"] for b in bodies] == [workflow_event_id(wid, b["status"], b["version"]) for b in bodies]
    assert len({b["event_id"] for b in bodies}) == 4  # RUNNING twice, two events
    done = bodies[-1]
    assert done["type"] == "workflow.status_changed" and done["workflow_id"] == wid
    assert done["name"] == "fashion" and [s["id"] for s in done["steps"]] == ["generate", "refine", "cutout", "adjust"]
    assert done["steps"][3]["result_image_url"] == versions[-1].step("adjust").result.result_image_url
    for headers, body, _ in receiver.requests:
        assert verify(SECRET, headers[SIGNATURE_HEADER], body)
        assert headers[EVENT_ID_HEADER] == json.loads(body)["event_id"]
    assert len(webhook_outbox(db_url, "workflow", wid)) == 4


def test_the_tasks_of_a_workflow_with_suppressed_subtask_events_send_no_webhook(
        db_url: str, kafka_settings: KafkaSettings) -> None:
    wid, step_task, plain_task = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    orchestration = Orchestration(generation_id=wid, prediction_index=0, generation_type=GenerationType.BASE,
                                  strategy=GenerationStrategy.GENERATE, workflow_id=wid, step_id="cutout",
                                  suppress_events=True)
    hook = "https://hooks.example.com/tasks"
    step = submitted(step_task, at=T0 - timedelta(seconds=1), webhook_url=hook, tenant="acme")
    step = step.model_copy(update={"orchestration": orchestration})
    plain = submitted(plain_task, at=T0 - timedelta(seconds=1), webhook_url=hook, tenant="acme")
    # queued only (no delivery thread reaches example.com): what matters is what is queued
    settings = WebhookSettings(secret=SECRET, threads=1, poll_s=60)
    with projecting(db_url, kafka_settings, settings):
        produce(kafka_settings, [step, plain, *lifecycle(step_task, tenant="acme"),
                                 *lifecycle(plain_task, tenant="acme")])
        wait_for(lambda: len(webhook_outbox(db_url, "task", plain_task)) == 4,
                 what="the ordinary task's four status webhooks queued")
        wait_for(lambda: (task_row(db_url, step_task) or {}).get("status") == "COMPLETED",
                 what="the step's task projected COMPLETED")
    assert task_row(db_url, step_task)["orchestration"]["suppress_events"] is True
    assert webhook_outbox(db_url, "task", step_task) == []  # none of its statuses
    bodies = [json.loads(bytes(o["body"])) for o in webhook_outbox(db_url, "task", plain_task)]
    assert [b["status"] for b in bodies] == ["PENDING", "QUEUED", "PROCESSING", "COMPLETED"]
    assert {b["task_type"] for b in bodies} == {TaskType.BACKGROUND_REMOVE.value}
