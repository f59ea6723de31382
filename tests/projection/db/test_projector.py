"""The live projector and rebuild against the real Kafka and PostgreSQL."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta

import pytest
from confluent_kafka import Producer

from projection.db.errors import NotEmptyError
from projection.rebuild import rebuild
from schemas.enums import ErrorCode, TaskStatus
from schemas.kafka_settings import KafkaSettings
from tests.kafka_helpers import read_topic
from tests.projection.db.helpers import (
    T0,
    fresh_database,
    lifecycle,
    produce,
    running_projector,
    status,
    submitted,
    table,
    task_row,
    wait_for,
)

pytestmark = pytest.mark.integration


def _scripted(rng: random.Random, n_tasks: int) -> list:
    """Task + status events of ``n_tasks`` tasks with duplicates and out-of-order deliveries."""
    out = []
    for i in range(n_tasks):
        tid = str(uuid.uuid4())
        start = T0 + timedelta(minutes=i)
        final = [TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.PROCESSING][i % 3]
        if i % 4 == 0:  # a retried attempt: QUEUED for attempt 2 with the error (issue 17)
            final = TaskStatus.PROCESSING
        events = lifecycle(tid, start=start, final=final, tenant="acme")
        if i % 4 == 0:
            events.append(status(tid, TaskStatus.QUEUED, at=start + timedelta(seconds=10),
                                 attempt=2, code=ErrorCode.PROVIDER_TIMEOUT))
            events.append(status(tid, TaskStatus.PROCESSING, at=start + timedelta(seconds=12),
                                 attempt=2, progress=0.5))
        deliveries = events + rng.sample(events, 2)  # duplicates
        rng.shuffle(deliveries)  # reordering
        out.append(submitted(tid, at=start - timedelta(seconds=1), tenant="acme"))
        out.extend(deliveries)
    return out


def test_live_projection_survives_duplicates_reordering_and_bad_records(
    db_url: str, kafka_settings: KafkaSettings, database_url: str
) -> None:
    rng = random.Random(5)
    events = _scripted(rng, 12)
    tids = sorted({e.envelope.task_id for e in events})
    with running_projector(db_url, kafka_settings, batch_size=7) as projector:
        produce(kafka_settings, events[: len(events) // 2])
        raw = Producer(kafka_settings.producer_config())
        raw.produce(kafka_settings.topics.status, key=tids[0], value=b"\x00not avro at all")
        raw.flush(10)
        produce(kafka_settings, events[len(events) // 2:])
        wait_for(lambda: projector.stats.records >= len(events) + 1, what="every record projected")
    assert projector.stats.dead_lettered == 1
    dlq = read_topic(kafka_settings, kafka_settings.topics.dlq(kafka_settings.topics.status),
                     expect=1)
    assert dict(dlq[0].headers())["dead-lettered-by"] == b"projector"
    rows = {tid: task_row(db_url, tid) for tid in tids}
    assert all(r is not None and r["version"] > 0 for r in rows.values())
    retried = [r for r in rows.values() if r["attempt"] == 2]
    assert retried and all(r["status"] == "PROCESSING" for r in retried)
    assert {r["status"] for r in rows.values()} >= {"COMPLETED", "FAILED", "PROCESSING"}

    # The same topics replayed into an empty database give the same rows.
    with fresh_database(database_url) as rebuilt:
        report = rebuild(rebuilt, kafka_settings)
        assert report.tasks == len(tids) and report.skipped == 1
        assert table(rebuilt, "tasks", "task_id") == table(db_url, "tasks", "task_id")
        assert table(rebuilt, "task_events", "event_id") == table(db_url, "task_events", "event_id")
        with pytest.raises(NotEmptyError):
            rebuild(rebuilt, kafka_settings)


def test_projector_resumes_from_committed_offsets(db_url: str, kafka_settings: KafkaSettings) -> None:
    tid = str(uuid.uuid4())
    events = lifecycle(tid)
    with running_projector(db_url, kafka_settings) as first:
        produce(kafka_settings, events[:2])
        wait_for(lambda: first.stats.records >= 2, what="the first two records")
    with running_projector(db_url, kafka_settings) as second:
        produce(kafka_settings, events[2:])
        wait_for(lambda: (task_row(db_url, tid) or {}).get("status") == "COMPLETED",
                 what="COMPLETED")
    assert second.stats.records == len(events) - 2  # nothing read twice after a clean stop
    assert task_row(db_url, tid)["event_seq"] == len(events)


def test_text_postgresql_cannot_store_is_kept_with_a_replacement_character(
        db_url: str, kafka_settings: KafkaSettings) -> None:
    """A model may write U+0000, which jsonb and text refuse: it is stored as U+FFFD (the topic
    keeps the exact text) instead of stopping the projection (seen in the demo, a tiny LLM)."""
    tid, after = str(uuid.uuid4()), str(uuid.uuid4())
    events = lifecycle(tid)
    done = events[-1]
    events[-1] = done.model_copy(update={"result": done.result.model_copy(
        update={"result_text": "ze\x00table\x00"})})
    failed = status(after, TaskStatus.FAILED, at=T0, code=ErrorCode.PROVIDER_ERROR)
    failed = failed.model_copy(update={"error": failed.error.model_copy(
        update={"message": "the model said \x00"})})
    with running_projector(db_url, kafka_settings) as projector:
        produce(kafka_settings, [*events, failed])
        wait_for(lambda: (task_row(db_url, after) or {}).get("status") == "FAILED",
                 what="the task after it projected")
    assert projector.stats.dead_lettered == 0
    row = task_row(db_url, tid)
    assert row["status"] == "COMPLETED" and row["result"]["result_text"] == "ze\ufffdtable\ufffd"
    history = table(db_url, "task_events", "seq")
    assert any(r[-1].get("result") and r[-1]["result"]["result_text"] == "ze\ufffdtable\ufffd"
               for r in history if isinstance(r[-1], dict))
    assert task_row(db_url, after)["error_message"] == "the model said \ufffd"


def test_a_record_postgresql_refuses_is_dead_lettered_and_the_rest_projected(
        db_url: str, kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever PostgreSQL refuses to store (SQLSTATE class 22) must not stop the projector: the
    batch is split, the refused record dead-lettered, the others written. PostgreSQL's refusal is
    stood in for by the fold's collaborator (no valid event makes the real one refuse any more)."""
    import psycopg

    import projection.projector as projector_module

    refused_tid, good = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(3)]
    real_apply = projector_module.apply_events

    def apply_events(conn, events, cache=None):
        if any(e.envelope.task_id == refused_tid for e in events):
            raise psycopg.DataError("value out of range (standing in for PostgreSQL)")
        return real_apply(conn, events, cache)

    monkeypatch.setattr(projector_module, "apply_events", apply_events)
    events = [e for tid in (good[0], refused_tid, *good[1:]) for e in lifecycle(tid)]
    with running_projector(db_url, kafka_settings, batch_size=50) as projector:
        produce(kafka_settings, events)
        wait_for(lambda: all((task_row(db_url, t) or {}).get("status") == "COMPLETED" for t in good),
                 what="the other tasks projected")
        wait_for(lambda: projector.stats.dead_lettered == len(lifecycle(refused_tid)),
                 what="the refused task's records dead-lettered")
    assert task_row(db_url, refused_tid) is None
    dlq = read_topic(kafka_settings, kafka_settings.topics.dlq(kafka_settings.topics.status),
                     expect=len(lifecycle(refused_tid)))
    assert {dict(m.headers())["error.class"] for m in dlq} == {b"DataError"}
