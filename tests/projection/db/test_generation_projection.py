"""The generation projection: GenerationRecord documents -> generations, predictions,
orchestrated_shots, shot_attempts, refines. Guarded by the version; live and rebuilt the same."""

from __future__ import annotations

import uuid
from datetime import UTC

import psycopg
import pytest
from psycopg.rows import dict_row

from generations.record import encode_record
from projection.db.errors import NotEmptyError
from projection.db.generation_projection import (
    apply_generation_records,
    decode_generation_record,
    rows_of,
)
from projection.db.migrate import migrate
from projection.rebuild import rebuild
from schemas.errors import DecodeError
from schemas.kafka_settings import KafkaSettings
from tests.projection.db import generation_helpers as gh
from tests.projection.db.helpers import fresh_database, lifecycle, produce, running_projector, table, wait_for

AGENTIC = {"strategy": "GENERATE", "generation_type": "AGENTIC", "subject_id": gh.SUBJECT_ID,
           "shot_type_string": "full-body shot", "seed": 7}
REFINE = {"strategy": "REFINE", "base_image_url": "file:///in/look.png", "batch_size": 2,
          "upscale_enabled": True, "upscale_factor": 2.0}
GENERATION_TABLES = {"generations": "generation_id", "predictions": "generation_id, prediction_index",
                     "orchestrated_shots": "shot_id", "shot_attempts": "shot_id, attempt",
                     "refines": "refine_id"}


def _rows(url: str, query: str, *args: object) -> list[dict]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(query, args).fetchall()


def _apply(url: str, *records) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return apply_generation_records(conn, records)


# --------------------------------------------------------------------------- pure


def test_rows_of_an_agentic_record_keep_every_attempt_and_the_accepted_one() -> None:
    record = gh.agentic_record(gh.plan(AGENTIC), tenant="acme")
    rows = rows_of(record)
    assert rows.generation["strategy"] == "GENERATE" and rows.generation["generation_type"] == "AGENTIC"
    assert rows.generation["settings"]["min_confidence_score"] == 0.7
    assert "strategy" not in rows.generation["settings"]
    [shot] = rows.shots
    assert [a["score"] for a in rows.attempts] == list(gh.SCORES)
    assert [a["decision"] for a in rows.attempts] == ["RETRY", "RETRY", "ACCEPT_BEST"]
    assert shot["decision"] == "ACCEPT_BEST" and shot["accepted_attempt"] == 2 and shot["done"]
    assert shot["accepted_task_id"] == rows.attempts[1]["task_id"] == rows.predictions[0]["task_id"]
    assert all(a["result"]["result_image_url"].endswith(f"{a['task_id']}.png") for a in rows.attempts)
    assert rows.predictions[0]["shot_id"] == shot["shot_id"]


def test_decode_refuses_what_is_not_a_generation_record() -> None:
    record = gh.base_record(gh.plan(), tenant="acme")
    assert decode_generation_record(encode_record(record)) == record
    with pytest.raises(DecodeError, match="tombstone"):
        decode_generation_record(None)
    with pytest.raises(DecodeError, match="content-type"):
        decode_generation_record(encode_record(record), [("content-type", b"avro/binary")])
    with pytest.raises(DecodeError, match="not a GenerationRecord"):
        decode_generation_record(b'{"generation_id": 1}')


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.integration
def test_a_record_is_written_only_over_a_lower_version(db_url: str) -> None:
    migrate(db_url)
    p = gh.plan(AGENTIC)
    one, three = gh.agentic_record(p, tenant="acme", attempts=1), gh.agentic_record(p, tenant="acme")
    assert one.version < three.version
    assert _apply(db_url, three) == 1
    newest = {t: table(db_url, t, order) for t, order in GENERATION_TABLES.items()}
    assert _apply(db_url, one) == 0  # older: nothing moves back
    assert _apply(db_url, three) == 0  # a duplicate
    assert {t: table(db_url, t, order) for t, order in GENERATION_TABLES.items()} == newest
    [gen] = _rows(db_url, "SELECT * FROM generations")
    assert gen["version"] == three.version and gen["status"] == "COMPLETED"
    assert gen["completed_at"] == three.completed_at
    assert len(_rows(db_url, "SELECT * FROM shot_attempts")) == 3


@pytest.mark.integration
def test_a_newer_record_replaces_the_children_and_a_batch_keeps_its_highest(db_url: str) -> None:
    migrate(db_url)
    p = gh.plan(AGENTIC)
    one, three = gh.agentic_record(p, tenant="acme", attempts=1), gh.agentic_record(p, tenant="acme")
    assert _apply(db_url, one) == 1
    [shot] = _rows(db_url, "SELECT * FROM orchestrated_shots")
    assert not shot["done"] and shot["decision"] is None
    attempts = _rows(db_url, "SELECT attempt, status, score FROM shot_attempts ORDER BY attempt")
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "COMPLETED"), (2, "PENDING")]
    assert _apply(db_url, three) == 1
    assert [a["score"] for a in _rows(db_url, "SELECT score FROM shot_attempts ORDER BY attempt")] == list(gh.SCORES)
    # In one batch, the highest version wins, whatever the order.
    q = gh.plan(AGENTIC)
    assert _apply(db_url, gh.agentic_record(q, tenant="acme"), gh.agentic_record(q, tenant="acme", attempts=1)) == 1
    [row] = _rows(db_url, "SELECT version FROM generations WHERE generation_id = %s", q.generation_id)
    assert row["version"] == gh.agentic_record(q, tenant="acme").version


@pytest.mark.integration
def test_refine_and_prompt_step_records(db_url: str) -> None:
    migrate(db_url)
    refine = gh.base_record(gh.plan(REFINE), tenant="acme", done=True)
    prompted = gh.base_record(gh.plan({"strategy": "GENERATE", "subject_id": gh.SUBJECT_ID,
                                       "shot_type_string": "portrait", "auto_generate_prompt": True}),
                              tenant="acme")
    assert _apply(db_url, refine, prompted) == 2
    [r] = _rows(db_url, "SELECT * FROM refines")
    assert r["task_ids"] == list(refine.plan.refine.task_ids) and str(r["task_id"]) == r["task_ids"][0]
    assert r["params"]["upscale_factor"] == 2.0 and str(r["generation_id"]) == refine.generation_id
    [g] = _rows(db_url, "SELECT * FROM generations WHERE generation_id = %s", prompted.generation_id)
    assert str(g["prompt_task_id"]) == prompted.prompt_task_id and g["prompt"] == prompted.plan.prompt
    preds = _rows(db_url, "SELECT * FROM predictions WHERE generation_id = %s", refine.generation_id)
    assert [p["status"] for p in preds] == ["COMPLETED", "COMPLETED"] and all(p["result"] for p in preds)


# --------------------------------------------------------------------------- Kafka: live = rebuilt


@pytest.mark.integration
def test_live_projection_and_rebuild_give_the_same_generation_rows(
    db_url: str, kafka_settings: KafkaSettings, database_url: str
) -> None:
    agentic, refine, base = gh.plan(AGENTIC), gh.plan(REFINE), gh.plan()
    records = [
        gh.agentic_record(agentic, tenant="acme", attempts=1),
        gh.base_record(refine, tenant="acme"),
        gh.agentic_record(agentic, tenant="acme", attempts=2),
        gh.base_record(base, tenant="other", done=True, version=4),
        gh.agentic_record(agentic, tenant="acme"),
        gh.base_record(refine, tenant="acme", done=True, version=3),
        gh.agentic_record(agentic, tenant="acme", attempts=2),  # older, after the newest
        gh.base_record(base, tenant="other", version=2),  # older
        gh.base_record(refine, tenant="acme", done=True, version=3),  # duplicate
    ]
    tid = str(uuid.uuid4())
    with running_projector(db_url, kafka_settings, batch_size=3) as projector:
        gh.produce_records(kafka_settings, records[:4])
        gh.produce_records(kafka_settings, [b"{not json", None], key=str(uuid.uuid4()))
        gh.produce_records(kafka_settings, records[4:])
        produce(kafka_settings, lifecycle(tid, tenant="acme"))  # tasks project alongside
        total = len(records) + 2 + 5
        wait_for(lambda: projector.stats.records >= total, what="every record projected")
    assert projector.stats.skipped == 2
    gens = {str(g["generation_id"]): g for g in _rows(db_url, "SELECT * FROM generations")}
    assert {g: r["version"] for g, r in gens.items()} == {
        agentic.generation_id: 7, refine.generation_id: 3, base.generation_id: 4}
    assert gens[agentic.generation_id]["status"] == "COMPLETED"
    assert len(_rows(db_url, "SELECT * FROM shot_attempts")) == 3
    assert len(_rows(db_url, "SELECT * FROM tasks")) == 1

    with fresh_database(database_url) as rebuilt:
        report = rebuild(rebuilt, kafka_settings)
        assert report.generations == 3 and report.tasks == 1 and report.skipped == 2
        for name, order in GENERATION_TABLES.items():
            assert table(rebuilt, name, order) == table(db_url, name, order), name
        assert table(rebuilt, "tasks", "task_id") == table(db_url, "tasks", "task_id")
        with psycopg.connect(rebuilt, autocommit=True) as conn:
            conn.execute("DELETE FROM task_events; DELETE FROM tasks")
        with pytest.raises(NotEmptyError, match="generations"):
            rebuild(rebuilt, kafka_settings)


@pytest.mark.integration
def test_the_orchestrators_first_records_project(db_url: str) -> None:
    """What ``generation_flow.start`` publishes (not hand-built records) projects as well."""
    from datetime import datetime

    from generations import flow as generation_flow
    from generations.plan import GenerationRequested
    from generations.record import decode_record

    migrate(db_url)
    now = datetime.now(UTC)
    records = []
    for request in ({**AGENTIC, "batch_size": 2}, REFINE,
                    {"strategy": "GENERATE", "subject_id": gh.SUBJECT_ID, "shot_type_string": "x",
                     "auto_generate_prompt": True}):
        requested = GenerationRequested(plan=gh.plan(request), requested_at=now.isoformat(),
                                        origin_tenant_id="acme")
        record, _ = generation_flow.start(requested, now=now)
        records.append(decode_record(encode_record(record)))
    assert _apply(db_url, *records) == 3
    agentic = records[0]
    shots = _rows(db_url, "SELECT * FROM orchestrated_shots WHERE generation_id = %s", agentic.generation_id)
    assert sorted(s["prediction_index"] for s in shots) == [0, 1]
    attempts = _rows(db_url, "SELECT a.* FROM shot_attempts a JOIN orchestrated_shots s USING (shot_id)"
                             " WHERE s.generation_id = %s", agentic.generation_id)
    assert {str(a["task_id"]) for a in attempts} == {t.task_id for t in agentic.plan.tasks}
    assert len(_rows(db_url, "SELECT * FROM refines")) == 1
    assert len(_rows(db_url, "SELECT * FROM predictions")) == 2 + 2 + 1  # REFINE: batch_size 2


@pytest.mark.integration
def test_a_batch_finds_its_generation_rows_by_primary_key_whatever_the_tables_were_when_planned(
        db_url: str) -> None:
    """Kept generic plans made while the tables were small (a fresh database) must not be scans
    of whole tables, repeated for every batch as they grow (see migration 0009)."""
    migrate(db_url)
    tables = tuple(GENERATION_TABLES)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")  # what a kept plan is
        with conn.transaction():
            for _ in range(3):  # a first version, then the newer one replaces its children
                p = gh.plan(AGENTIC)
                apply_generation_records(conn, [gh.agentic_record(p, tenant="acme", attempts=1)])
                apply_generation_records(conn, [gh.agentic_record(p, tenant="acme")])
            scans = dict(conn.execute(
                "SELECT relname, pg_stat_get_xact_numscans(oid) FROM pg_class"
                " WHERE relname = ANY(%s) AND relkind = 'r'", (list(tables),)).fetchall())
    assert scans == dict.fromkeys(tables, 0)
