"""Migrations against the real PostgreSQL: apply, idempotent, concurrent, guarded."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from projection.db.errors import MigrationError
from projection.db.migrate import applied_versions, migrate, migrations

pytestmark = pytest.mark.integration

TABLES = {"tasks", "task_events", "generations", "predictions", "orchestrated_shots",
          "shot_attempts", "refines", "subjects", "products", "styles", "api_keys",
          "webhook_deliveries", "schema_migrations"}


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}


def test_migrate_applies_every_migration_once(db_url: str) -> None:
    versions = [m.version for m in migrations()]
    assert applied_versions(db_url) == []
    assert migrate(db_url) == versions
    assert _tables(db_url) >= TABLES
    assert migrate(db_url) == []  # idempotent
    assert applied_versions(db_url) == versions


def test_concurrent_migrations_apply_each_version_exactly_once(db_url: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(db_url))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(v for r in results for v in r) == [m.version for m in migrations()]


def test_a_failing_migration_is_rolled_back_and_reported(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE a (x int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE b (x int); SELECT no_such_function();")
    with pytest.raises(MigrationError, match="0002_bad"):
        migrate(db_url, tmp_path)
    assert applied_versions(db_url) == [1]
    assert "b" not in _tables(db_url)


def test_an_edited_migration_is_refused(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "0001_one.sql"
    path.write_text("CREATE TABLE a (x int);")
    migrate(db_url, tmp_path)
    path.write_text("CREATE TABLE a (x int, y int);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(db_url, tmp_path)


def test_misnamed_migration_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_x.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_lower_snake"):
        migrations(tmp_path)


def test_catalog_tables_created_before_migrations_keep_their_rows(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:  # what generations/catalog.py used to create
        conn.execute("CREATE TABLE subjects (id uuid PRIMARY KEY, name text NOT NULL, lora_ref text,"
                     " default_weight double precision, created_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("INSERT INTO subjects (id, name) VALUES (gen_random_uuid(), 'ana')")
    migrate(db_url)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT name FROM subjects").fetchall() == [("ana",)]
        cols = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'products'"
            " ORDER BY ordinal_position")]
    assert cols == ["id", "name", "lora_ref", "default_weight", "created_at", "reference_urls"]  # 0013 adds the last


def test_duration_ms_is_computed_from_started_and_completed(db_url: str) -> None:
    from tests.projection.db.helpers import T0

    migrate(db_url)
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO tasks (task_id, task_type, status, attempt, created_at, updated_at,"
            " started_at, completed_at) VALUES (gen_random_uuid(), 'REFINE', 'COMPLETED', 1,"
            " %s, %s, %s, %s)", (T0, T0, T0, T0 + timedelta(seconds=2, milliseconds=345)))
        assert conn.execute("SELECT duration_ms FROM tasks").fetchone() == (2345,)
