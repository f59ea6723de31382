"""Issue 17: the processors' fold, the projection and a rebuild agree on retried tasks, in any
delivery order, and the read model never shows a FAILED that something follows.

Property test (hypothesis) against the real PostgreSQL: a task's events as the system emits them
under the retry contract (attempt n + 1 starts QUEUED with attempt n's error, the lease timer's
second QUEUED sometimes, a final COMPLETED / FAILED / CANCELLED or none), delivered shuffled,
partly twice, in random batches:

* live projection (``apply_batch`` per batch) == ``state.lifecycle.fold_all`` over the events in
  first-seen order (version included) and, version aside, over the events in emission order;
* the processors' fold (``processors.folding.fold_batch`` over the encoded records, same
  batches) == the projection's row state;
* a rebuild (every record again, in topic order, into an empty database in one batch) == the
  live row, version aside;
* the transitions the webhooks are made of enter FAILED at most once, only when the task ended
  FAILED, and nothing follows it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.folding import fold_batch, state_to_json
from projection.db.migrate import migrate
from projection.db.projection import apply_batch, state_from_row
from schemas.codec import EventCodec
from schemas.enums import ErrorCode, TaskStatus
from schemas.events import StatusChanged
from state.lifecycle import TaskState, fold_all
from state.stops import lease_event_id
from tests.projection.db.helpers import T0, fresh_database, status, task_row

pytestmark = pytest.mark.integration

P, Q, R = TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.PROCESSING
C, F, X = TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED
CODEC = EventCodec()


@pytest.fixture(scope="module")
def two_databases(database_url: str) -> Iterator[tuple[str, str]]:
    """The live read model and a rebuilt one (fresh per module, migrated)."""
    with fresh_database(database_url) as live, fresh_database(database_url) as rebuilt:
        migrate(live)
        migrate(rebuilt)
        yield live, rebuilt


@st.composite
def retried_task(draw: st.DrawFn) -> list[StatusChanged]:
    """One task's status events in emission order (see the module doc)."""
    task_id = str(uuid.uuid4())
    clock = iter(range(0, 1000, 1))
    events: list[StatusChanged] = []

    def emit(st_: TaskStatus, attempt: int, **kw: object) -> StatusChanged:
        at = T0 + timedelta(seconds=next(clock) + draw(st.integers(0, 1)))
        events.append(status(task_id, st_, at=at, attempt=attempt, **kw))  # type: ignore[arg-type]
        return events[-1]

    emit(P, 1)
    emit(Q, 1)
    attempts = draw(st.integers(1, 3))
    for n in range(1, attempts + 1):
        if n > 1:  # the retry of attempt n - 1: QUEUED(n) with its error, never FAILED(n - 1)
            emit(Q, n, code=draw(st.sampled_from([ErrorCode.PROVIDER_ERROR,
                                                  ErrorCode.PROVIDER_TIMEOUT])))
            if draw(st.booleans()):  # the lease timer resubmitted it: a second QUEUED, same error
                again = emit(Q, n, code=events[-1].error.code)  # type: ignore[union-attr]
                events[-1] = again.model_copy(update={"envelope": again.envelope.model_copy(
                    update={"event_id": lease_event_id(task_id, n, "queued")})})
        for progress in draw(st.lists(st.sampled_from([0.0, 0.3, 0.7]), min_size=1, max_size=3)):
            emit(R, n, progress=progress)
    end = draw(st.sampled_from([None, C, F, X]))
    if end is not None:
        emit(end, attempts, code=ErrorCode.PROVIDER_ERROR if end is F else None)
    return events


@st.composite
def delivery(draw: st.DrawFn, events: list[StatusChanged]) -> list[list[StatusChanged]]:
    """The events shuffled, some twice, cut into batches of 1-4."""
    extra = draw(st.lists(st.sampled_from(events), max_size=len(events) // 2))
    order = draw(st.permutations(events + extra))
    batches, i = [], 0
    while i < len(order):
        n = draw(st.integers(1, 4))
        batches.append(order[i:i + n])
        i += n
    return batches


def _doc(state: TaskState | None, *, version: bool = True) -> dict | None:
    """The state as the processors' state topic writes it (one representation of the result for
    the three sides); without ``version`` when only the order of arrival differs."""
    if state is None:
        return None
    doc = state_to_json(state)
    return doc if version else {**doc, "version": 0}


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data(), events=retried_task())
def test_the_fold_the_projection_and_a_rebuild_agree_and_failed_is_only_ever_the_end(
        two_databases: tuple[str, str], data: st.DataObject, events: list[StatusChanged]) -> None:
    live, rebuilt = two_databases
    task_id = events[0].envelope.task_id
    batches = data.draw(delivery(events))
    table: dict[str, TaskState] = {}  # the processors' tasks table
    firsts: dict[str, StatusChanged] = {}
    entered_failed, after_failed = 0, 0
    with psycopg.connect(live, autocommit=True) as conn:
        for batch in batches:
            result = apply_batch(conn, batch)
            for t in result.transitions:
                if t.before is not None and (t.before.status, t.before.attempt) == (
                        t.after.status, t.after.attempt):
                    continue  # progress only: no webhook (projection.webhooks.enqueue)
                if entered_failed:
                    after_failed += 1
                if t.after.status is F:
                    entered_failed += 1
            for e in batch:
                firsts.setdefault(e.envelope.event_id, e)
            outcome = fold_batch(CODEC, [(task_id.encode(), CODEC.encode(e), 0) for e in batch],
                                 table.get)
            assert not outcome.dead
            for changed in outcome.changed:
                table[changed.task_id] = changed.state
    row_state = state_from_row(task_row(live, task_id))

    assert _doc(row_state) == _doc(fold_all(firsts.values()))  # version included
    assert _doc(row_state, version=False) == _doc(fold_all(events), version=False)
    assert _doc(table[task_id]) == _doc(row_state)  # the processors' fold: same version too

    with psycopg.connect(rebuilt, autocommit=True) as conn:  # a rebuild: every record again
        apply_batch(conn, [e for batch in batches for e in batch])
    rebuilt_state = state_from_row(task_row(rebuilt, task_id))
    assert _doc(rebuilt_state, version=False) == _doc(row_state, version=False)

    ended_failed = events[-1].status is F
    assert entered_failed == (1 if ended_failed else 0)  # webhooks: one FAILED, at the end
    assert after_failed == 0
    if row_state.status is Q and row_state.attempt > 1:
        assert row_state.awaiting_retry and row_state.error_code is not None
