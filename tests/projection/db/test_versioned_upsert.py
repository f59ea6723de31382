"""The version-guarded replace both state-topic projections share (projection/db/versioned_upsert.py):
its SQL and its values, without a database (test_generation_projection.py and
test_workflow_projection.py run it against PostgreSQL)."""

from __future__ import annotations

import pytest
from psycopg.types.json import Jsonb

from projection.db.generation_projection import _GENERATIONS
from projection.db.versioned_upsert import VersionedTable
from projection.db.workflow_projection import _WORKFLOWS


@pytest.mark.parametrize("spec", [_GENERATIONS, _WORKFLOWS], ids=lambda s: s.table)
def test_the_upsert_only_moves_a_row_to_a_higher_version(spec: VersionedTable) -> None:
    upsert = spec.upsert_sql()
    assert upsert.startswith(f"INSERT INTO {spec.table} ({', '.join(spec.columns)}) VALUES (")
    assert upsert.count("%s") == len(spec.columns)
    head, _, assignments = upsert.partition(f" ON CONFLICT ({spec.key}) DO UPDATE SET ")
    assert assignments, upsert
    sets, _, guard = assignments.partition(" WHERE ")
    # Every column but the key is replaced: the record is the whole document.
    assert sets.split(", ") == [f"{c} = EXCLUDED.{c}" for c in spec.columns[1:]]
    assert guard == f"{spec.table}.version < EXCLUDED.version RETURNING {spec.key}::text"


def test_shot_attempts_are_replaced_through_their_shot_not_deleted_by_generation() -> None:
    # shot_attempts has no generation_id column: its rows go with orchestrated_shots' (cascade).
    cleared = [c.table for c in _GENERATIONS.children if c.cleared]
    assert cleared == ["predictions", "orchestrated_shots", "refines"]
    assert [c.table for c in _GENERATIONS.children] == [
        "predictions", "orchestrated_shots", "shot_attempts", "refines"]  # parents before children
    assert [c.table for c in _WORKFLOWS.children if c.cleared] == ["workflow_steps"]


def test_params_write_json_columns_as_jsonb_and_text_without_nul() -> None:
    row = {"workflow_id": "w\x00id", "config": {"k": "v"}, "result": None, "attempt": 2}
    values = _WORKFLOWS.params(row, ("workflow_id", "config", "result", "attempt"))
    assert values[0] == "w\ufffdid"
    assert isinstance(values[1], Jsonb) and values[1].obj == {"k": "v"}
    assert values[2] is None and values[3] == 2  # a NULL JSON column stays NULL, not 'null'
