"""apply_batch against the real PostgreSQL: the row is the fold, whatever the delivery order."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from psycopg.rows import dict_row

from projection.db.migrate import migrate
from projection.db.projection import (
    NOTIFY_CHANNEL,
    _read_rows,
    apply_batch,
    flatten,
    parse_notify_payload,
    state_from_row,
)
from projection.db.queries import TASK_COLUMNS, task_row_from_json
from schemas.enums import ErrorCode, TaskStatus, TaskType
from state.lifecycle import RANK, fold_all
from tests.projection.db.helpers import T0, lifecycle, status, submitted, task_row

pytestmark = pytest.mark.integration


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    migrate(db_url)
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


def _deliveries(events: list, rng: random.Random) -> list:
    """Shuffled, with a third of the events delivered twice."""
    out = list(events) + rng.sample(events, len(events) // 3)
    rng.shuffle(out)
    return out


def _batches(items: list, rng: random.Random) -> Iterator[list]:
    i = 0
    while i < len(items):
        n = rng.randint(1, 4)
        yield items[i:i + n]
        i += n


@pytest.mark.parametrize("seed", range(8))
def test_row_equals_the_fold_and_never_regresses(conn: psycopg.Connection, db_url: str,
                                                  seed: int) -> None:
    rng = random.Random(seed)
    tid = str(uuid.uuid4())
    events = lifecycle(tid) + [
        status(tid, TaskStatus.FAILED, at=T0 + timedelta(seconds=9), code=ErrorCode.PROVIDER_ERROR),
        status(tid, TaskStatus.PROCESSING, at=T0 + timedelta(seconds=3), progress=0.1),
    ]
    delivered = _deliveries(events, rng) + [submitted(tid, at=T0 - timedelta(seconds=1),
                                                      tenant="acme")]
    rng.shuffle(delivered)
    seen: set[str] = set()
    firsts = []
    last_rank = (0, -1, -1.0)
    for batch in _batches(delivered, rng):
        apply_batch(conn, batch)
        for e in batch:
            if hasattr(e, "status") and e.envelope.event_id not in seen:
                seen.add(e.envelope.event_id)
                firsts.append(e)
        row = task_row(db_url, tid)
        if row["version"]:
            rank = (row["attempt"], RANK[TaskStatus(row["status"])], row["progress"])
            assert rank >= last_rank, "the row moved backwards"
            last_rank = rank
    row = task_row(db_url, tid)
    expected = fold_all(flatten(e) for e in firsts)
    assert state_from_row(row) == expected  # version included: same first-seen order
    assert row["status"] == "COMPLETED" and row["progress"] == 1.0
    assert row["params"] == {"image_url": "file:///in/a.png", "output_format": None,
                             "provider_type": None, "provider_config": None}
    assert row["origin_tenant_id"] == "acme" and row["event_seq"] == len(events)
    with conn.cursor() as cur:
        seqs = [r[0] for r in cur.execute(
            "SELECT seq FROM task_events WHERE task_id = %s ORDER BY seq", (tid,))]
    assert seqs == list(range(1, len(events) + 1))


def test_replaying_everything_changes_nothing(conn: psycopg.Connection, db_url: str) -> None:
    tid = str(uuid.uuid4())
    events = [submitted(tid, at=T0), *lifecycle(tid, final=TaskStatus.FAILED)]
    apply_batch(conn, events)
    before = task_row(db_url, tid)
    result = apply_batch(conn, list(reversed(events)))
    assert result.tasks_written == 0 and result.events_inserted == 0
    assert task_row(db_url, tid) == before
    assert before["status"] == "FAILED" and before["error_code"] == "CONTENT_POLICY"


def test_submitted_only_row_then_status(conn: psycopg.Connection, db_url: str) -> None:
    tid = str(uuid.uuid4())
    apply_batch(conn, [submitted(tid, at=T0, task_type=TaskType.LLM_INTERACTION,
                                 params={"prompt": "hi", "provider_type": "classical"},
                                 webhook_url="https://example.com/hook", instance="i1",
                                 zone="z1", tenant="t1")])
    row = task_row(db_url, tid)
    assert (row["version"], row["status"], row["provider_type"]) == (0, "PENDING", "classical")
    assert (row["origin_instance"], row["origin_zone"], row["origin_tenant_id"]) == ("i1", "z1", "t1")
    assert row["webhook_url"] == "https://example.com/hook"
    apply_batch(conn, [status(tid, TaskStatus.QUEUED, at=T0 + timedelta(seconds=1),
                              task_type=TaskType.LLM_INTERACTION)])
    row = task_row(db_url, tid)
    assert (row["version"], row["status"], row["provider_type"]) == (1, "QUEUED", "classical")


def test_a_retry_submission_replaces_the_params(conn: psycopg.Connection, db_url: str) -> None:
    tid = str(uuid.uuid4())
    first = submitted(tid, at=T0, task_type=TaskType.GENERATION, params={"prompt": "a", "seed": 1})
    retry = submitted(tid, at=T0 + timedelta(seconds=5), task_type=TaskType.GENERATION,
                      params={"prompt": "a", "seed": 2}, attempt=2)
    apply_batch(conn, [retry])
    apply_batch(conn, [first])  # older attempt, later delivery: ignored
    row = task_row(db_url, tid)
    assert row["params"]["seed"] == 2 and row["submitted_attempt"] == 2


def test_submissions_alone_converge_whatever_their_order(conn: psycopg.Connection,
                                                         db_url: str) -> None:
    tid = str(uuid.uuid4())
    first = submitted(tid, at=T0, task_type=TaskType.GENERATION, params={"prompt": "a"})
    retry = submitted(tid, at=T0 + timedelta(seconds=5), task_type=TaskType.GENERATION,
                      params={"prompt": "b"}, attempt=2)
    apply_batch(conn, [retry])
    apply_batch(conn, [first])
    one = task_row(db_url, tid)
    other = str(uuid.uuid4())
    apply_batch(conn, [e.model_copy(update={"envelope": e.envelope.model_copy(
        update={"task_id": other})}) for e in (first, retry)])
    two = task_row(db_url, other)
    keys = ("status", "attempt", "created_at", "updated_at", "params", "version", "submitted_attempt")
    assert {k: one[k] for k in keys} == {k: two[k] for k in keys}
    assert one["attempt"] == 2 and one["params"]["prompt"] == "b" and one["version"] == 0


def test_each_batch_notifies_every_task_it_wrote_with_its_status_now(conn: psycopg.Connection,
                                                                      db_url: str) -> None:
    """The API's long polls wake only on a status that may end the task: the NOTIFY says which."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        apply_batch(conn, [status(a, TaskStatus.PENDING, at=T0), status(a, TaskStatus.QUEUED, at=T0),
                           status(b, TaskStatus.PENDING, at=T0)])
        apply_batch(conn, [status(a, TaskStatus.PROCESSING, at=T0 + timedelta(seconds=1)),
                           status(a, TaskStatus.COMPLETED, at=T0 + timedelta(seconds=2))])
        payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=3)]
    assert sorted(payloads[:2]) == sorted([f"{a} QUEUED", f"{b} PENDING"])
    assert payloads[2].startswith(f"{a} COMPLETED {{")
    assert parse_notify_payload(f"{a} QUEUED") == (a, "QUEUED", None)
    assert parse_notify_payload(a) == (a, None, None)  # a bare id (an older projector): no status


def _read_row(conn: psycopg.Connection, task_id: str) -> dict:
    """The row as the API's get_task reads it."""
    columns = ", ".join(TASK_COLUMNS)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(f"SELECT {columns} FROM tasks WHERE task_id = %s", (task_id,)).fetchone()


@pytest.mark.parametrize("final", [TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED])
def test_a_notification_that_may_end_a_task_carries_its_row_as_the_api_reads_it(
        conn: psycopg.Connection, db_url: str, final: TaskStatus) -> None:
    """The API's long poll answers with the notified row instead of reading it: it must be the
    row get_task would read, value for value and type for type."""
    tid = str(uuid.uuid4())
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("SET TIME ZONE 'Asia/Kolkata'")  # the row is typed in the reader's zone
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        apply_batch(conn, [submitted(tid, at=T0, tenant="acme", params={"image_url": "file:///in/é.png"})])
        events = lifecycle(tid, final=final, tenant="acme")
        apply_batch(conn, events[:-1])
        apply_batch(conn, events[-1:])
        notices = [parse_notify_payload(n.payload)
                   for n in listener.notifies(timeout=5, stop_after=3)]
        assert [(n.status, n.row is None) for n in notices] == \
            [("PENDING", True), ("PROCESSING", True), (final.value, False)]
        carried = task_row_from_json(notices[-1].row, listener.info.timezone)
        read = _read_row(listener, tid)
    assert carried == read and read["status"] == final.value and read["origin_tenant_id"] == "acme"
    assert [type(carried[c]) for c in read] == [type(v) for v in read.values()]
    assert carried["created_at"].utcoffset() == timedelta(hours=5, minutes=30)


def test_a_row_too_large_for_a_notification_is_left_out(conn: psycopg.Connection, db_url: str) -> None:
    tid = str(uuid.uuid4())
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        apply_batch(conn, [submitted(tid, at=T0, task_type=TaskType.LLM_INTERACTION,
                                     params={"prompt": "x" * 8000}),
                           *lifecycle(tid, final=TaskStatus.CANCELLED)])
        [note] = listener.notifies(timeout=5, stop_after=1)
    assert parse_notify_payload(note.payload) == (tid, "CANCELLED", None)  # read by the API instead


def test_a_batch_finds_its_rows_by_primary_key_whatever_the_table_was_when_planned(
        conn: psycopg.Connection, db_url: str) -> None:
    """The plans psycopg and PL/pgSQL keep are generic ones, made once: a batch's reads must not
    become scans of the whole table (one per batch, growing with it) when they were made while
    the table was small, as in a fresh database (migration 0009)."""
    tid = str(uuid.uuid4())
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("SET plan_cache_mode = force_generic_plan")  # what a kept plan is
        apply_batch(c, [submitted(tid, at=T0), *lifecycle(tid, final=TaskStatus.QUEUED)])
        [xmin] = c.execute("SELECT xmin::text FROM tasks WHERE task_id = %s", (tid,)).fetchone()
        with c.transaction():
            for _ in range(3):
                c.execute("SELECT projection_claim(%s::text[], 1, %s::text[])", ([tid], [xmin]))
                rows, _, _ = _read_rows(c, [tid])
                assert rows[tid]["status"] == "QUEUED"
            scans = c.execute("SELECT pg_stat_get_xact_numscans('tasks'::regclass),"
                              " pg_stat_get_xact_numscans('task_events'::regclass)").fetchone()
    assert scans == (0, 0)
