"""The projector's remembered rows (projection/db/task_row_cache.py) against the real PostgreSQL and
Kafka: batches that skip the read write exactly what batches that read write, and a remembered
row someone else changed is refused, not overwritten."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest

import projection.db.projection as projection
from projection.db.migrate import migrate
from projection.db.pipelined import pipelined_transaction
from projection.db.projection import apply_batch, apply_events
from projection.db.task_row_cache import CachedTask, TaskRowCache
from schemas.enums import ErrorCode, TaskStatus
from schemas.kafka_settings import KafkaSettings
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


@pytest.fixture
def read_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many batches read their rows (the cache's collaborator, counted, still real)."""
    calls = [0]
    real = projection._read_rows

    def counted(*args):
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(projection, "_read_rows", counted)
    return calls


def _write(conn: psycopg.Connection, events: list, cache: TaskRowCache) -> None:
    """What the projector does with a batch: one pipelined transaction, then remember."""
    with pipelined_transaction(conn):
        result = apply_events(conn, events, cache)
    assert result.pending_rows is not None
    cache.store(result.pending_rows.entries())


def _scripted(rng: random.Random, n_tasks: int) -> list:
    out = []
    for i in range(n_tasks):
        tid = str(uuid.uuid4())
        start = T0 + timedelta(minutes=i)
        events = lifecycle(tid, start=start, tenant="acme") + [
            status(tid, TaskStatus.QUEUED, at=start + timedelta(seconds=9), attempt=2,
                   code=ErrorCode.PROVIDER_TIMEOUT),  # a retry (issue 17: never FAILED)
            status(tid, TaskStatus.PROCESSING, at=start + timedelta(seconds=12), attempt=2),
        ]
        events += rng.sample(events, 3)  # duplicates
        rng.shuffle(events)  # reordering
        events.insert(rng.randrange(len(events)), submitted(tid, at=start, tenant="acme"))
        out.extend(events)
    return out


@pytest.fixture
def two_databases(database_url: str) -> Iterator[tuple[str, str]]:
    with fresh_database(database_url) as a, fresh_database(database_url) as b:
        migrate(a)
        migrate(b)
        yield a, b


@pytest.mark.parametrize("seed", range(3))
def test_remembered_rows_write_the_same_tables_as_read_rows(
        two_databases: tuple[str, str], read_count: list[int], seed: int) -> None:
    rng = random.Random(seed)
    events = _scripted(rng, 6)
    batches, i = [], 0
    while i < len(events):
        n = rng.randint(1, 5)
        batches.append(events[i:i + n])
        i += n
    read_url, cached_url = two_databases
    with psycopg.connect(read_url, autocommit=True) as conn:
        for batch in batches:
            apply_batch(conn, batch)
    reads_without_cache = read_count[0]
    cache = TaskRowCache()
    with psycopg.connect(cached_url, autocommit=True) as conn:
        for batch in batches:
            _write(conn, batch, cache)
    reads_with_cache = read_count[0] - reads_without_cache
    assert reads_without_cache == len(batches)
    # Every task's first batch reads; most later ones do not.
    assert reads_with_cache < len(batches) / 2
    for name, order in (("tasks", "task_id"), ("task_events", "task_id, seq")):
        assert table(cached_url, name, order) == table(read_url, name, order)


def test_a_row_changed_by_another_writer_is_refused_and_written_again_after_reading(
        db_url: str, read_count: list[int]) -> None:
    migrate(db_url)
    tid = str(uuid.uuid4())
    pending, queued, processing, later, completed = lifecycle(tid)
    cache = TaskRowCache()
    with psycopg.connect(db_url, autocommit=True) as conn, \
            psycopg.connect(db_url, autocommit=True) as other:
        _write(conn, [pending, queued], cache)
        _write(conn, [processing], cache)
        assert read_count[0] == 1  # the second batch used the remembered row
        apply_batch(other, [later])  # another projector writes the task meanwhile
        before = task_row(db_url, tid)
        with pytest.raises(psycopg.errors.SerializationFailure, match="changed since"):
            _write(conn, [completed], cache)
        assert task_row(db_url, tid) == before  # nothing of the refused batch was kept
        cache.clear()
        _write(conn, [completed], cache)
    row = task_row(db_url, tid)
    assert (row["status"], row["event_seq"], row["version"]) == ("COMPLETED", 5, 5)
    seqs = [r[2] for r in table(db_url, "task_events", "seq")]
    assert seqs == [1, 2, 3, 4, 5]


def test_a_deleted_row_is_refused_too(db_url: str) -> None:
    migrate(db_url)
    tid = str(uuid.uuid4())
    pending, queued, *_ = lifecycle(tid)
    cache = TaskRowCache()
    with psycopg.connect(db_url, autocommit=True) as conn:
        _write(conn, [pending], cache)
        conn.execute("DELETE FROM task_events")
        conn.execute("DELETE FROM tasks")
        with pytest.raises(psycopg.errors.SerializationFailure):
            _write(conn, [queued], cache)
    assert task_row(db_url, tid) is None


def test_the_live_projector_recovers_from_a_stale_row(
        db_url: str, kafka_settings: KafkaSettings) -> None:
    tid = str(uuid.uuid4())
    pending, queued, processing, later, completed = lifecycle(tid)
    with running_projector(db_url, kafka_settings) as projector:
        produce(kafka_settings, [pending, queued, processing])
        wait_for(lambda: (task_row(db_url, tid) or {}).get("status") == "PROCESSING",
                 what="the task projected up to PROCESSING")
        with psycopg.connect(db_url, autocommit=True) as other:
            apply_batch(other, [later])  # as another member of the group would
        produce(kafka_settings, [completed])
        wait_for(lambda: task_row(db_url, tid)["status"] == "COMPLETED", what="COMPLETED")
        assert projector.stats.stale_rows == 1
    assert task_row(db_url, tid)["event_seq"] == 5
    assert [r[2] for r in table(db_url, "task_events", "seq")] == [1, 2, 3, 4, 5]


def _entry(n: int) -> CachedTask:
    return CachedTask({"n": n}, frozenset(), str(n))


def test_lookup_needs_every_task_and_the_least_recently_used_go_first() -> None:
    cache = TaskRowCache(max_tasks=2)
    cache.store({"a": _entry(1), "b": _entry(2)})
    assert cache.lookup(["a", "zz"]) is None
    assert cache.lookup(["a"]) == {"a": _entry(1)}  # "a" is now the most recently used
    cache.store({"c": _entry(3)})
    assert len(cache) == 2
    assert cache.lookup(["b"]) is None
    assert cache.lookup(["a", "c"]) == {"a": _entry(1), "c": _entry(3)}
    cache.clear()
    assert cache.lookup(["a"]) is None
