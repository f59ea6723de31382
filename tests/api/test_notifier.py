"""EventNotifier against the real PostgreSQL: who a NOTIFY wakes."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from api.notifier import EventNotifier
from projection.db.projection import NOTIFY_CHANNEL, notify_payload
from tests.projection.db.helpers import fresh_database

_DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def db_url(database_url: str):
    with fresh_database(database_url) as url:
        yield url


async def _notify(db_url: str, *payloads: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        for payload in payloads:
            await conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, payload))


async def _until(condition, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _DEADLINE_S
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _listening(notifier: EventNotifier, db_url: str) -> None:
    """Until the notifier's LISTEN is in place: a probe subscription is woken by a notification."""
    probe_id = str(uuid.uuid4())
    with notifier.subscribe(probe_id) as probe:
        async def woken() -> None:
            while not probe.is_set():
                await _notify(db_url, probe_id)
                await asyncio.sleep(0.05)
        await asyncio.wait_for(woken(), _DEADLINE_S)


def test_a_filtered_subscription_wakes_only_on_the_statuses_it_asks_for(db_url: str) -> None:
    async def scenario() -> None:
        notifier = EventNotifier(db_url)
        notifier.start()
        try:
            await _listening(notifier, db_url)
            tid, other = str(uuid.uuid4()), str(uuid.uuid4())
            with notifier.subscribe(tid, lambda s: s == "COMPLETED") as ending, \
                    notifier.subscribe(tid) as every, notifier.subscribe(other) as unrelated:
                await _notify(db_url, notify_payload(tid, "PROCESSING"))
                await _until(every.is_set, "the unfiltered subscription to wake")
                # The notifications of one connection arrive in order: by the time this one
                # wakes a subscriber, PROCESSING has been handed out (and did not wake `ending`).
                every.clear()
                await _notify(db_url, notify_payload(tid, ""))
                await _until(every.is_set, "the status-less change")
                assert not ending.is_set() and not unrelated.is_set()
                await _notify(db_url, notify_payload(tid, "COMPLETED"))
                await _until(ending.is_set, "the filtered subscription to wake on COMPLETED")
                ending.clear()
                await _notify(db_url, tid)  # a bare id says nothing of the status: wake
                await _until(ending.is_set, "a bare id to wake the filtered subscription")
                assert not unrelated.is_set()
            assert tid not in notifier._waiters and other not in notifier._waiters
        finally:
            await notifier.stop()

    asyncio.run(scenario())


def test_a_long_poll_answers_with_the_notified_row_without_reading_again(db_url: str) -> None:
    """The row a notification carries answers the long poll when the caller accepts it (its
    tenant's task); otherwise the poll reads the row as before."""
    async def scenario() -> None:
        notifier = EventNotifier(db_url)
        notifier.start()
        try:
            await _listening(notifier, db_url)
            for tenant, reads_expected in (("acme", 1), ("other", 2)):
                tid = str(uuid.uuid4())
                reads: list[str] = []

                async def read() -> dict:
                    reads.append("read")
                    return {"status": "PROCESSING" if len(reads) == 1 else "COMPLETED"}

                row = json.dumps({"task_id": tid, "status": "COMPLETED", "progress": 1,
                                  "origin_tenant_id": tenant, "generation_id": None,
                                  **{c: None for c in ("created_at", "queued_at", "started_at",
                                                       "updated_at")},
                                  "completed_at": "2026-12-06T05:00:00.5+00:00"})
                polling = asyncio.create_task(notifier.long_poll(
                    tid, read, lambda r: r["status"] == "COMPLETED", 30, 30,
                    accept=lambda r: r if r["origin_tenant_id"] == "acme" else None))
                await _until(lambda: reads, "the first read")
                await _notify(db_url, f"{notify_payload(tid, 'COMPLETED')} {row}")
                answer = await asyncio.wait_for(polling, _DEADLINE_S)
                assert len(reads) == reads_expected
                if tenant == "acme":  # typed as a read would give it
                    assert answer["task_id"] == uuid.UUID(tid) and type(answer["progress"]) is float
                    assert answer["completed_at"] == datetime(2026, 12, 6, 5, 0, 0, 500000,
                                                              tzinfo=UTC)
                else:
                    assert answer == {"status": "COMPLETED"}
        finally:
            await notifier.stop()

    asyncio.run(scenario())
