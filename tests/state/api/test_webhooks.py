"""Webhooks: delivered, signed, retried after a refused first attempt, every attempt recorded;
private addresses refused unless allowed."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics
from state.api.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, WebhookSettings, verify
from state.db.migrate import migrate
from state.projector import run_projector
from tests.state.db.helpers import lifecycle, produce, submitted, wait_for

pytestmark = pytest.mark.integration

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


def _deliveries(db_url: str, task_id: str) -> list[tuple]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT attempt, status_code, error, event_id::text FROM webhook_deliveries"
            " WHERE task_id = %s ORDER BY delivery_id", (task_id,)).fetchall()


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
        wait_for(lambda: any(json.loads(b)["status"] == "COMPLETED" for _, b, c in receiver.requests
                             if c == 200), what="the COMPLETED webhook")
        wait_for(lambda: len(_deliveries(db_url, tid)) == len(receiver.requests),
                 what="every attempt recorded")
    delivered = [json.loads(b) for _, b, c in receiver.requests if c == 200]
    # every status change once (the progress-only PROCESSING report is not a status change)
    assert [d["status"] for d in delivered] == ["PENDING", "QUEUED", "PROCESSING", "COMPLETED"]
    assert delivered[-1]["result"]["result_image_url"].endswith(f"{tid}.png")
    for headers, body, _ in receiver.requests:
        assert verify(SECRET, headers[SIGNATURE_HEADER], body)
        assert not verify("wrong secret", headers[SIGNATURE_HEADER], body)
        assert headers[EVENT_ID_HEADER] == json.loads(body)["event_id"]
    rows = _deliveries(db_url, tid)
    first_event = rows[0][3]
    attempts = [(a, code) for a, code, _, ev in rows if ev == first_event]
    assert attempts == [(1, 503), (2, 200)]  # refused, then retried and delivered
    assert rows[0][2] == "HTTP 503"


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
    assert rows[0][:2] == (1, None) and "loopback address 127.0.0.1" in rows[0][2]
    assert receiver.requests == []
