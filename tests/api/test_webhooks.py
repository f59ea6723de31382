"""Webhooks: delivered, signed, retried after a refused first attempt, every attempt recorded;
the outbox survives a projector restart and commits with its batch; per-origin URLs; private
addresses refused unless allowed; several dispatchers share the outbox in per-task order."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from projection.db.migrate import migrate
from projection.db.projection import apply_batch
from projection.projector import run_projector
from projection.webhook_delivery import WebhookDispatcher
from projection.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    WebhookSettings,
    verify,
    webhook_settings_from_env,
)
from schemas.enums import TaskStatus
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics
from tests.api.helpers import (
    crash_before_commit,
    project_until,
    webhook_deliveries,
    webhook_outbox,
)
from tests.projection.db.helpers import T0, lifecycle, produce, submitted, task_row, wait_for

SECRET = "s3cr3t-for-tests"


class Receiver:
    """A local HTTP endpoint answering ``codes`` in turn (then 200), recording each request."""

    def __init__(self, codes: list[int]) -> None:
        self.codes = list(codes)
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = receiver.codes.pop(0) if receiver.codes else 200
                receiver.requests.append((dict(self.headers), body, code))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[dict]:
        return [json.loads(b) for _, b, c in self.requests if c == 200]


@contextmanager
def projecting(db_url: str, kafka: KafkaSettings, webhooks: WebhookSettings) -> Iterator[None]:
    migrate(db_url)
    ensure_topics(kafka)  # before anything is produced: auto-created topics have 1 partition
    stop = threading.Event()
    thread = threading.Thread(target=run_projector, args=(db_url, kafka, stop),
                              kwargs={"webhooks": webhooks}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the projector did not stop"


def _deliveries(db_url: str, task_id: str) -> list[tuple]:
    return webhook_deliveries(db_url, "task", task_id)


def _outbox(db_url: str, task_id: str) -> list[tuple]:
    return [(row["state"], row["attempts"]) for row in webhook_outbox(db_url, "task", task_id)]


def _check_signed(receiver: Receiver) -> None:
    for headers, body, _ in receiver.requests:
        assert verify(SECRET, headers[SIGNATURE_HEADER], body)
        assert not verify("wrong secret", headers[SIGNATURE_HEADER], body)
        assert headers[EVENT_ID_HEADER] == json.loads(body)["event_id"]


@pytest.mark.integration
def test_status_changes_are_delivered_signed_and_retried(db_url: str,
                                                         kafka_settings: KafkaSettings) -> None:
    receiver = Receiver([503])  # the first delivery is refused
    tid = str(uuid.uuid4())
    events = lifecycle(tid)
    settings = WebhookSettings(secret=SECRET, allow_private_networks=True, backoff_base_s=0.05)
    with projecting(db_url, kafka_settings, settings):
        produce(kafka_settings, [submitted(tid, at=events[0].envelope.occurred_at,
                                           webhook_url=receiver.url)])
        produce(kafka_settings, events)
        wait_for(lambda: any(d["status"] == "COMPLETED" for d in receiver.delivered()),
                 what="the COMPLETED webhook")
        wait_for(lambda: len(_deliveries(db_url, tid)) == len(receiver.requests),
                 what="every attempt recorded")
    delivered = receiver.delivered()
    # every status change once, in order (the progress-only PROCESSING report is not a change)
    assert [d["status"] for d in delivered] == ["PENDING", "QUEUED", "PROCESSING", "COMPLETED"]
    assert delivered[-1]["result"]["result_image_url"].endswith(f"{tid}.png")
    _check_signed(receiver)
    rows = _deliveries(db_url, tid)
    first_event = rows[0][3]
    attempts = [(a, code) for a, code, _, ev, _ in rows if ev == first_event]
    assert attempts == [(1, 503), (2, 200)]  # refused, then retried and delivered
    assert rows[0][2] == "HTTP 503"
    assert _outbox(db_url, tid) == [("delivered", 2)] + [("delivered", 1)] * 3


@pytest.mark.integration
def test_a_pending_retry_survives_a_projector_restart(db_url: str,
                                                      kafka_settings: KafkaSettings) -> None:
    receiver = Receiver([503])
    tid = str(uuid.uuid4())
    events = lifecycle(tid, final=TaskStatus.PENDING)
    # The retry is due an hour after the refusal: the first projector stops long before.
    settings = WebhookSettings(secret=SECRET, allow_private_networks=True, backoff_base_s=3600.0)
    with projecting(db_url, kafka_settings, settings):
        produce(kafka_settings, [submitted(tid, at=events[0].envelope.occurred_at,
                                           webhook_url=receiver.url), *events])
        wait_for(lambda: _deliveries(db_url, tid), what="the refused first attempt recorded")
    assert len(receiver.requests) == 1
    assert _outbox(db_url, tid) == [("pending", 1)]  # stopped between the attempt and the retry
    with psycopg.connect(db_url) as conn:  # the hour passes while no projector runs
        conn.execute("UPDATE webhook_outbox SET next_attempt_at = now() WHERE subject_id = %s", (tid,))

    with projecting(db_url, kafka_settings, settings):  # a new projector, nothing new to read
        wait_for(lambda: _outbox(db_url, tid) == [("delivered", 2)], what="the retry delivered")
    assert [(a, code) for a, code, *_ in _deliveries(db_url, tid)] == [(1, 503), (2, 200)]
    assert [c for _, _, c in receiver.requests] == [503, 200]
    assert receiver.requests[0][1] == receiver.requests[1][1]  # the same body, the same event
    _check_signed(receiver)


@pytest.mark.integration
def test_the_outbox_commits_with_its_batch(db_url: str, kafka_settings: KafkaSettings) -> None:
    """A batch whose transaction fails leaves neither rows nor deliveries; replayed, it queues
    each delivery once."""
    migrate(db_url)
    ensure_topics(kafka_settings)
    tid = str(uuid.uuid4())
    events = lifecycle(tid, final=TaskStatus.QUEUED)
    settings = WebhookSettings(secret=SECRET)
    # The submission first, projected on its own (statuses and tasks are on different topics:
    # this fixes which batch the status changes are in).
    produce(kafka_settings, [submitted(tid, at=events[0].envelope.occurred_at,
                                       webhook_url="http://hooks.example/x")])
    project_until(db_url, kafka_settings, settings, lambda: task_row(db_url, tid),
                  what="the submission")
    produce(kafka_settings, events)
    crash_before_commit(db_url, kafka_settings, settings, what="a batch with status changes")
    assert task_row(db_url, tid)["version"] == 0  # no status change committed...
    assert _outbox(db_url, tid) == []  # ...and no delivery queued
    project_until(db_url, kafka_settings, settings,
                  lambda: (task_row(db_url, tid) or {}).get("status") == "QUEUED",
                  what="the batch replayed")
    assert _outbox(db_url, tid) == [("pending", 0), ("pending", 0)]  # PENDING, QUEUED; once


@pytest.mark.integration
def test_origin_url_serves_tasks_without_their_own(db_url: str,
                                                   kafka_settings: KafkaSettings) -> None:
    origin_rx, own_rx = Receiver([]), Receiver([])
    plain, own, elsewhere = (str(uuid.uuid4()) for _ in range(3))
    settings = WebhookSettings(secret=SECRET, allow_private_networks=True,
                               origin_urls={"shop-1": origin_rx.url})
    origins = {plain: "shop-1", own: "shop-1", elsewhere: "shop-2"}
    with projecting(db_url, kafka_settings, settings):
        produce(kafka_settings, [
            submitted(tid, at=lifecycle(tid)[0].envelope.occurred_at, instance=origin,
                      webhook_url=own_rx.url if tid == own else None)
            for tid, origin in origins.items()])
        wait_for(lambda: all(task_row(db_url, tid) for tid in origins), what="the submissions")
        for tid, origin in origins.items():
            produce(kafka_settings, lifecycle(tid, final=TaskStatus.QUEUED, instance=origin))
        wait_for(lambda: len(origin_rx.delivered()) == 2 and len(own_rx.delivered()) == 2,
                 what="both receivers' deliveries")
        wait_for(lambda: task_row(db_url, elsewhere)["status"] == "QUEUED", what="the projection")
    assert [(d["task_id"], d["status"]) for d in origin_rx.delivered()] == [
        (plain, "PENDING"), (plain, "QUEUED")]
    assert [(d["task_id"], d["status"]) for d in own_rx.delivered()] == [
        (own, "PENDING"), (own, "QUEUED")]  # the task's own URL wins over its origin's
    _check_signed(origin_rx)
    assert {r[4] for r in _deliveries(db_url, plain)} == {origin_rx.url}
    assert _outbox(db_url, elsewhere) == [] and _deliveries(db_url, elsewhere) == []


@pytest.mark.integration
def test_statuses_projected_before_the_submission_are_delivered(db_url: str,
                                                                  kafka_settings: KafkaSettings) -> None:
    """Statuses and tasks travel on different topics: a task's PENDING and QUEUED may be
    projected before its submitted event says where its webhooks go. They are delivered then,
    in order, once."""
    receiver = Receiver([])
    tid = str(uuid.uuid4())
    events = lifecycle(tid, final=TaskStatus.PROCESSING)
    settings = WebhookSettings(secret=SECRET, allow_private_networks=True)
    with projecting(db_url, kafka_settings, settings):
        produce(kafka_settings, events[:2])  # PENDING, QUEUED: no URL known yet
        wait_for(lambda: (task_row(db_url, tid) or {}).get("status") == "QUEUED", what="the statuses")
        assert _outbox(db_url, tid) == []
        produce(kafka_settings, [submitted(tid, at=events[0].envelope.occurred_at,
                                           webhook_url=receiver.url)])
        wait_for(lambda: len(receiver.delivered()) == 2, what="the two earlier changes delivered")
        produce(kafka_settings, events[2:])  # PROCESSING (with progress): one more change
        wait_for(lambda: len(receiver.delivered()) == 3, what="the next change delivered")
    assert [(d["task_id"], d["status"]) for d in receiver.delivered()] == [
        (tid, "PENDING"), (tid, "QUEUED"), (tid, "PROCESSING")]
    assert [d["event_id"] for d in receiver.delivered()] == [e.envelope.event_id for e in events[:3]]
    _check_signed(receiver)


@pytest.mark.integration
def test_private_addresses_are_refused_unless_allowed(db_url: str,
                                                      kafka_settings: KafkaSettings) -> None:
    receiver = Receiver([])
    tid = str(uuid.uuid4())
    events = lifecycle(tid)[:1]
    settings = WebhookSettings(secret=SECRET, allow_private_networks=False)
    with projecting(db_url, kafka_settings, settings):
        produce(kafka_settings, [submitted(tid, at=events[0].envelope.occurred_at,
                                           webhook_url=receiver.url), *events])
        rows = wait_for(lambda: _deliveries(db_url, tid), what="the refused delivery recorded")
        wait_for(lambda: _outbox(db_url, tid) == [("failed", 1)], what="the delivery final")
    assert rows[0][:2] == (1, None) and "loopback address 127.0.0.1" in rows[0][2]
    assert receiver.requests == []


@pytest.mark.integration
def test_dispatchers_share_the_outbox_in_task_order(db_url: str) -> None:
    """Two dispatchers (as two projector processes) on one outbox: each delivery once, each
    task's in order, a retrying head holding its task's later deliveries back."""
    migrate(db_url)
    receiver = Receiver([503, 503])  # the first two requests (both tasks' heads, or one twice)
    tasks = [str(uuid.uuid4()) for _ in range(2)]
    rows = [(tid, str(uuid.uuid4()), receiver.url, json.dumps({"task_id": tid, "n": n}).encode())
            for n in range(4) for tid in tasks]
    with psycopg.connect(db_url) as conn:
        conn.cursor().executemany("INSERT INTO webhook_outbox (subject_kind, subject_id,"
                                  " event_id, url, body) VALUES ('task', %s, %s, %s, %s)", rows)
    settings = WebhookSettings(secret=SECRET, allow_private_networks=True, backoff_base_s=0.05,
                               threads=3)
    dispatchers = [WebhookDispatcher(db_url, settings) for _ in range(2)]
    try:
        assert dispatchers[0].wait_idle(30), "the outbox was not drained"
    finally:
        for d in dispatchers:
            d.stop()
    for tid in tasks:
        sent = [(json.loads(b)["n"], c) for _, b, c in receiver.requests
                if json.loads(b)["task_id"] == tid]
        assert [n for n, _ in sent] == sorted(n for n, _ in sent)  # a retry before the next
        assert [n for n, c in sent if c == 200] == [0, 1, 2, 3]
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM webhook_deliveries").fetchone()[0] == 10
        assert conn.execute("SELECT count(*) FROM webhook_outbox WHERE state = 'delivered'"
                            ).fetchone()[0] == 8


def test_final_outbox_rows_expire_pending_ones_never(db_url: str) -> None:
    migrate(db_url)
    tid = str(uuid.uuid4())
    with psycopg.connect(db_url) as conn:
        for state, age_days in (("delivered", 8), ("failed", 8), ("delivered", 1), ("pending", 30)):
            conn.execute("INSERT INTO webhook_outbox (subject_kind, subject_id, event_id, url, body,"
                         " state, updated_at, next_attempt_at) VALUES ('task', %s, %s,"
                         " 'https://hooks.example/x', '{}', %s, now() - make_interval(days => %s),"
                         " now() + interval '1 day')", (tid, str(uuid.uuid4()), state, age_days))
    dispatcher = WebhookDispatcher(db_url, WebhookSettings(secret=SECRET, threads=1))
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            assert dispatcher.prune(conn) == 2
    finally:
        dispatcher.stop()
    assert sorted(_outbox(db_url, tid)) == [("delivered", 0), ("pending", 0)]


def test_settings_from_env() -> None:
    assert webhook_settings_from_env({}) is None
    s = webhook_settings_from_env({
        "COMPUTE_WEBHOOK_SECRET": "x", "COMPUTE_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
        "COMPUTE_WEBHOOK_ORIGIN_URLS": '{"backend-eu-1": "https://hooks.example/compute"}'})
    assert s is not None and s.allow_private_networks
    assert dict(s.origin_urls) == {"backend-eu-1": "https://hooks.example/compute"}
    for bad in ("not json", '["https://a.example"]', '{"a": 1}', '{"a": "ftp://a.example"}'):
        with pytest.raises(ValueError):
            webhook_settings_from_env({"COMPUTE_WEBHOOK_SECRET": "x",
                                       "COMPUTE_WEBHOOK_ORIGIN_URLS": bad})


def test_a_batch_wakes_delivery_threads_only_for_the_deliveries_it_queued(db_url: str) -> None:
    """Each woken thread queries the outbox: a batch of tasks without a webhook wakes none."""
    migrate(db_url)
    dispatcher = WebhookDispatcher(db_url, WebhookSettings(secret=SECRET, threads=1))
    woken: list[int | None] = []
    dispatcher.wake = woken.append  # type: ignore[method-assign]  # what on_batch asks for
    quiet, hooked = str(uuid.uuid4()), str(uuid.uuid4())
    per_batch = []
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            for events in ([submitted(quiet, at=T0), *lifecycle(quiet)],
                           [submitted(hooked, at=T0, webhook_url="https://hooks.example/x"),
                            *lifecycle(hooked)]):
                with conn.transaction():
                    result = apply_batch(conn, events)
                    queued = dispatcher.enqueue(conn, result)
                assert result.transitions  # both batches changed statuses
                woken.clear()
                dispatcher.on_batch(result)
                per_batch.append((queued, list(woken)))
    finally:
        dispatcher.stop()
    # PENDING, QUEUED, PROCESSING and COMPLETED (progress alone is not delivered)
    assert per_batch == [(0, []), (4, [4])]
