"""Issue 17 in the read model: origin_version and entity_id come from the task (its submitted
event, else its statuses, which carry them); the origin instance and zone only from the submitted
event, since a status event names the worker or processor that wrote it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest

from projection.db.migrate import migrate
from projection.db.projection import apply_batch
from schemas.enums import TaskStatus
from tests.projection.db.helpers import T0, status, submitted, task_row

pytestmark = pytest.mark.integration

TASK_ORIGIN = {"instance": "backend-7", "zone": "eu-1", "tenant": "acme"}


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    migrate(db_url)
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


def _carried(event, **update):
    return event.model_copy(update={"envelope": event.envelope.model_copy(update=update)})


def _worker_status(tid: str, st: TaskStatus, seconds: int):
    # What a worker writes (gpu_consumers/emitter.py): its own instance and zone, the task's
    # tenant, origin version and entity id.
    return _carried(status(tid, st, at=T0 + timedelta(seconds=seconds), instance="worker-x-1", zone="gpu-b",
                           tenant="acme", progress=0.5 if st is TaskStatus.PROCESSING else None),
                    origin_version="backend-4.2.1", entity_id="order-42")


@pytest.mark.parametrize("submitted_first", [True, False], ids=["submitted-first", "statuses-first"])
def test_the_row_has_the_tasks_origin_version_and_entity(conn, db_url, submitted_first):
    tid = str(uuid.uuid4())
    task = _carried(submitted(tid, at=T0, **TASK_ORIGIN), origin_version="backend-4.2.1", entity_id="order-42")
    statuses = [_worker_status(tid, TaskStatus.QUEUED, 1), _worker_status(tid, TaskStatus.PROCESSING, 2)]
    batches = [[task], statuses] if submitted_first else [statuses, [task]]
    for batch in batches:
        apply_batch(conn, batch)
    row = task_row(db_url, tid)
    assert (row["origin_instance"], row["origin_zone"], row["origin_tenant_id"]) == ("backend-7", "eu-1", "acme")
    assert (row["origin_version"], row["entity_id"]) == ("backend-4.2.1", "order-42")
    assert row["status"] == "PROCESSING"


def test_statuses_alone_never_make_the_worker_the_tasks_origin(conn, db_url):
    tid = str(uuid.uuid4())
    apply_batch(conn, [_worker_status(tid, TaskStatus.QUEUED, 1)])
    row = task_row(db_url, tid)
    assert row["origin_instance"] is None and row["origin_zone"] is None
    assert (row["origin_tenant_id"], row["origin_version"], row["entity_id"]) == ("acme", "backend-4.2.1", "order-42")
