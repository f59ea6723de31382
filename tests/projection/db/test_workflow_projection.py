"""The workflow read model on the real PostgreSQL and Kafka: version-guarded replace of a
workflow's rows, the status changes reported for webhooks, and the live projection of the
workflows-state topic equal to a rebuild of it."""

from __future__ import annotations

import random

import psycopg
import pytest
from psycopg.rows import dict_row

from projection.db.migrate import migrate
from projection.db.workflow_projection import project_workflow_records
from projection.rebuild import rebuild
from schemas.kafka_settings import KafkaSettings
from tests.projection.db import workflow_helpers as wh
from tests.projection.db.helpers import fresh_database, running_projector, table, wait_for

pytestmark = pytest.mark.integration


def _workflow(url: str, wid: str) -> dict | None:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        row = conn.execute("SELECT * FROM workflows WHERE workflow_id = %s", (wid,)).fetchone()
        if row is not None:
            row["steps"] = conn.execute("SELECT * FROM workflow_steps WHERE workflow_id = %s"
                                        " ORDER BY position", (wid,)).fetchall()
        return row


def test_a_record_replaces_the_rows_only_with_a_higher_version(db_url: str) -> None:
    migrate(db_url)
    spec = wh.spec()
    v1 = wh.state(spec, version=1)
    wid = v1.workflow_id
    v2 = wh.state(spec, workflow_id=wid, version=2, done=1)
    v3 = wh.state(spec, workflow_id=wid, version=3, status="PAUSED", done=2, running=False)
    v4 = wh.state(spec, workflow_id=wid, version=4, status="COMPLETED", done=4)
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = project_workflow_records(conn, [v2, v1, v2])  # in one batch, out of order
        assert first.written == 1
        assert [(c.before, c.after, c.version) for c in first.changes] == [(None, "RUNNING", 1)]
        assert project_workflow_records(conn, [v1, v2]).written == 0  # older and equal: refused
        row = _workflow(db_url, wid)
        assert row["version"] == 2 and row["status"] == "RUNNING" and row["origin_tenant_id"] == "acme"
        assert [s["step_id"] for s in row["steps"]] == ["generate", "refine", "cutout", "adjust"]
        assert [s["status"] for s in row["steps"]] == ["COMPLETED", "RUNNING", "PENDING", "PENDING"]
        assert row["steps"][1]["input_mappings"] == [{"from_step": "generate", "from_field": "result_image_url",
                                                      "to_field": "base_image_url"}]

        later = project_workflow_records(conn, [v4, v3])
        assert [(c.before, c.after) for c in later.changes] == [("RUNNING", "PAUSED"), ("PAUSED", "COMPLETED")]
    row = _workflow(db_url, wid)
    assert row["status"] == "COMPLETED" and row["version"] == 4 and row["completed_at"] is not None
    assert [s["status"] for s in row["steps"]] == ["COMPLETED"] * 4
    adjust = row["steps"][3]
    assert adjust["result"]["result_image_url"] == v4.step("adjust").result.result_image_url
    assert str(adjust["task_id"]) == v4.step("adjust").task_id and adjust["attempt"] == 1


def test_the_live_projection_equals_a_rebuild(db_url: str, kafka_settings: KafkaSettings,
                                              database_url: str) -> None:
    """Three workflows' records, with duplicates, versions out of order and an unreadable
    record, projected live; the topic replayed into an empty database gives the same rows."""
    rng = random.Random(18)
    spec = wh.spec()
    records = []
    finals = {}
    for n, final in enumerate(("COMPLETED", "FAILED", "CANCELLED")):
        first = wh.state(spec, tenant=f"t{n}", status="CREATED", running=False)
        wid = first.workflow_id
        history = [first, wh.state(spec, workflow_id=wid, tenant=f"t{n}", version=2),
                   wh.state(spec, workflow_id=wid, tenant=f"t{n}", version=3, done=1),
                   wh.state(spec, workflow_id=wid, tenant=f"t{n}", version=4, status=final,
                            done=4 if final == "COMPLETED" else 1, running=False,
                            failed=final == "FAILED")]
        finals[wid] = final
        deliveries = history + rng.sample(history, 2)
        rng.shuffle(deliveries)
        records.extend(deliveries)
    with running_projector(db_url, kafka_settings, batch_size=5) as projector:
        wh.produce_states(kafka_settings, [*records[:6], b"\x00not a workflow", *records[6:]])
        wait_for(lambda: projector.stats.records >= len(records) + 1, what="every record read")
    assert projector.stats.skipped == 1
    for wid, final in finals.items():
        row = _workflow(db_url, wid)
        assert row["status"] == final and row["version"] == 4
    failed = next(_workflow(db_url, w) for w, f in finals.items() if f == "FAILED")
    assert [s["status"] for s in failed["steps"]][:2] == ["COMPLETED", "FAILED"]
    assert failed["steps"][1]["error_code"] == "INVALID_INPUT"

    with fresh_database(database_url) as rebuilt:
        report = rebuild(rebuilt, kafka_settings)
        assert report.workflows == 3 and report.skipped == 1
        assert table(rebuilt, "workflows", "workflow_id") == table(db_url, "workflows", "workflow_id")
        assert (table(rebuilt, "workflow_steps", "workflow_id, position")
                == table(db_url, "workflow_steps", "workflow_id, position"))
