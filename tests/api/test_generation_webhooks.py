"""Generation webhooks: a generation's status changes (RUNNING, then its terminal status) are
queued in the outbox with its projection and POSTed, signed, with the documented body; a refused
attempt is retried and every attempt recorded; duplicate, older or same-status records queue
nothing; per-origin URLs; the outbox commits with the generation rows; ``db rebuild`` queues
nothing. Real PostgreSQL and Kafka; GenerationRecord documents are produced to the
generations-state topic as the processors would."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.rows import dict_row

from generations.record import GenerationRecord, GenerationStatus
from projection.db.migrate import migrate
from projection.projector import Projector
from projection.rebuild import rebuild
from projection.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    WebhookSettings,
    enqueue,
    generation_event_id,
    verify,
)
from schemas.enums import TaskStatus
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics
from tests.api.helpers import (
    crash_before_commit,
    project_until,
    webhook_deliveries,
    webhook_outbox,
)
from tests.api.test_webhooks import SECRET, Receiver, projecting
from tests.projection.db import generation_helpers as gh
from tests.projection.db.helpers import fresh_database, wait_for

pytestmark = pytest.mark.integration

ORIGIN_URL = "https://origin.example.com/generations"


def _record(*, version: int, status: GenerationStatus = GenerationStatus.RUNNING,
            url: str | None = "https://hooks.example.com/g", plan=None, **update) -> GenerationRecord:
    record = gh.base_record(plan or gh.plan(seed=1), tenant="acme", version=version,
                            done=status is GenerationStatus.COMPLETED)
    return record.model_copy(update={"status": status, "webhook_url": url, **update})


def _failed(record: GenerationRecord, version: int) -> GenerationRecord:
    predictions = tuple(p.model_copy(update={"status": TaskStatus.FAILED,
                                             "error_code": "PROVIDER_ERROR",
                                             "error_message": "the model failed"})
                        for p in record.predictions)
    return record.model_copy(update={"status": GenerationStatus.FAILED, "version": version,
                                     "predictions": predictions,
                                     "completed_at": record.updated_at})


def _outbox(db_url: str, gid: str) -> list[dict]:
    return webhook_outbox(db_url, "generation", gid)


def _deliveries(db_url: str, gid: str) -> list[tuple]:
    return webhook_deliveries(db_url, "generation", gid)


def _generation(db_url: str, gid: str) -> dict | None:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return conn.execute("SELECT status, version FROM generations WHERE generation_id = %s",
                            (gid,)).fetchone()


@pytest.fixture
def projector(db_url: str, kafka_settings: KafkaSettings) -> Iterator[Projector]:
    """A projector queueing (not delivering) webhooks; a per-origin URL for ``api-test``."""
    migrate(db_url)
    ensure_topics(kafka_settings)
    settings = WebhookSettings(secret=SECRET, origin_urls={"api-test": ORIGIN_URL})
    p = Projector(db_url, kafka_settings, create_topics=False,
                  in_transaction=lambda conn, result: enqueue(conn, result, settings))
    try:
        yield p
    finally:
        p.close()


def _project(projector: Projector, records: int) -> None:
    """Poll until the projector has read ``records`` records in all."""
    wait_for(lambda: projector.poll_once() is not None and projector.stats.records >= records,
             what=f"{records} records projected")


def test_a_generation_gets_running_then_completed_signed_and_retried(
        db_url: str, kafka_settings: KafkaSettings) -> None:
    receiver = Receiver([503])  # the first delivery (RUNNING) is refused, then retried
    p = gh.plan(seed=2)
    gid = p.generation_id
    settings = WebhookSettings(secret=SECRET, allow_private_networks=True, backoff_base_s=0.05)
    with projecting(db_url, kafka_settings, settings):
        gh.produce_records(kafka_settings, [_record(version=1, plan=p, url=receiver.url)])
        wait_for(lambda: receiver.delivered(), what="the RUNNING webhook")
        # a newer version of the same status is not a change; COMPLETED is
        gh.produce_records(kafka_settings, [
            _record(version=2, plan=p, url=receiver.url),
            _record(version=3, plan=p, url=receiver.url, status=GenerationStatus.COMPLETED)])
        wait_for(lambda: len(receiver.delivered()) == 2, what="the COMPLETED webhook")
        wait_for(lambda: len(_deliveries(db_url, gid)) == len(receiver.requests) == 3,
                 what="every attempt recorded")
    running, completed = receiver.delivered()
    tasks = [t.task_id for t in p.tasks]
    assert running == {
        "type": "generation.status_changed", "event_id": generation_event_id(gid, "RUNNING"),
        "generation_id": gid, "status": "RUNNING", "version": 1,
        "predictions": [{"index": i, "status": "PROCESSING", "task_id": tid,
                         "result_image_url": None, "result_video_url": None, "error": None}
                        for i, tid in enumerate(tasks)],
        "occurred_at": "2025-01-01T12:00:01+00:00"}
    assert completed["status"] == "COMPLETED" and completed["version"] == 3
    assert completed["event_id"] == str(uuid.uuid5(uuid.UUID(gid), "COMPLETED"))
    assert [(pr["status"], pr["result_image_url"]) for pr in completed["predictions"]] == [
        ("COMPLETED", f"file:///out/{tid}.png") for tid in tasks]
    assert completed["occurred_at"] == "2025-01-01T12:00:03+00:00"
    for headers, body, _ in receiver.requests:
        assert verify(SECRET, headers[SIGNATURE_HEADER], body)
        assert not verify("wrong secret", headers[SIGNATURE_HEADER], body)
        assert headers[EVENT_ID_HEADER] == json.loads(body)["event_id"]
    assert receiver.requests[0][1] == receiver.requests[1][1]  # the retry sends the same body
    rows = _deliveries(db_url, gid)
    assert [(a, code, ev) for a, code, _, ev, _ in rows] == [
        (1, 503, running["event_id"]), (2, 200, running["event_id"]),
        (1, 200, completed["event_id"])]
    assert rows[0][2] == "HTTP 503" and {r[4] for r in rows} == {receiver.url}
    assert [(o["state"], o["attempts"]) for o in _outbox(db_url, gid)] == [
        ("delivered", 2), ("delivered", 1)]


def test_duplicate_older_and_same_status_records_queue_nothing_new(
        db_url: str, kafka_settings: KafkaSettings, projector: Projector,
        database_url: str) -> None:
    p = gh.plan(seed=3)
    gid = p.generation_id
    first = [_record(version=1, plan=p), _record(version=2, plan=p),
             _record(version=3, plan=p, status=GenerationStatus.COMPLETED)]
    gh.produce_records(kafka_settings, first)
    _project(projector, 3)
    queued = _outbox(db_url, gid)
    # RUNNING then COMPLETED, whether the records came in one batch or several
    assert [json.loads(o["body"])["status"] for o in queued] == ["RUNNING", "COMPLETED"]
    assert [o["event_id"] for o in queued] == [generation_event_id(gid, "RUNNING"),
                                               generation_event_id(gid, "COMPLETED")]
    assert {o["url"] for o in queued} == {"https://hooks.example.com/g"}
    assert [json.loads(o["body"])["version"] for o in queued] == [1, 3]

    # replays: a duplicate, older records, and a newer version of the same status
    gh.produce_records(kafka_settings, [first[2], first[0], first[1],
                                        _record(version=4, plan=p,
                                                status=GenerationStatus.COMPLETED)])
    _project(projector, 7)
    assert _generation(db_url, gid) == {"status": "COMPLETED", "version": 4}
    assert _outbox(db_url, gid) == queued

    # a FAILED generation: its predictions' errors; one without a URL of its own goes to its
    # origin's; one of an unmapped origin gets nothing
    failing, plain, elsewhere = (gh.plan(seed=s) for s in (4, 5, 6))
    gh.produce_records(kafka_settings, [
        _failed(_record(version=1, plan=failing), 2),
        _record(version=1, plan=plain, url=None),
        _record(version=1, plan=elsewhere, url=None, origin_instance="shop-2")])
    _project(projector, 10)
    [failed] = _outbox(db_url, failing.generation_id)
    body = json.loads(failed["body"])
    assert body["status"] == "FAILED" and body["version"] == 2
    assert {json.dumps(pr["error"]) for pr in body["predictions"]} == {
        '{"code": "PROVIDER_ERROR", "message": "the model failed"}'}
    assert [o["url"] for o in _outbox(db_url, plain.generation_id)] == [ORIGIN_URL]
    assert _generation(db_url, elsewhere.generation_id) is not None
    assert _outbox(db_url, elsewhere.generation_id) == []

    # db rebuild: the same rows, no deliveries queued
    with fresh_database(database_url) as rebuilt:
        report = rebuild(rebuilt, kafka_settings, timeout_s=60)
        assert report.generations == 4
        assert _generation(rebuilt, gid) == {"status": "COMPLETED", "version": 4}
        with psycopg.connect(rebuilt) as conn:
            assert conn.execute("SELECT count(*) FROM webhook_outbox").fetchone()[0] == 0


def test_generation_rows_and_outbox_commit_together(db_url: str,
                                                   kafka_settings: KafkaSettings) -> None:
    """A batch whose transaction fails leaves neither the generation's rows nor its outbox rows;
    replayed, it writes both, once."""
    migrate(db_url)
    ensure_topics(kafka_settings)
    p = gh.plan(seed=7)
    gid = p.generation_id
    gh.produce_records(kafka_settings, [_record(version=1, plan=p)])
    settings = WebhookSettings(secret=SECRET)

    crash_before_commit(db_url, kafka_settings, settings, what="the generation's batch")
    assert _generation(db_url, gid) is None and _outbox(db_url, gid) == []
    project_until(db_url, kafka_settings, settings, lambda: _generation(db_url, gid),
                  what="the batch replayed")
    assert _generation(db_url, gid) == {"status": "RUNNING", "version": 1}
    assert [(o["state"], o["attempts"]) for o in _outbox(db_url, gid)] == [("pending", 0)]
