"""Submits during a broker outage (issue 15, item 6): they must not queue behind one another.

The broker is a private one, a child of this test, frozen with SIGSTOP: it accepts connections
and answers nothing, as a broker in a long GC pause or on a stalled disk does. Concurrent submits
through the API's gateway then each end on their own deadline (a DeliveryError, which the API
answers 503 with Retry-After), all within about one deadline, not one deadline per submit
queued before them (the lock held across each flush made the fifth submit wait five deadlines).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from api.gateway import TaskGateway
from devstack.kafka import KafkaBroker
from producers.errors import DeliveryError
from schemas.enums import TaskType
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics

pytestmark = pytest.mark.integration

ACK_TIMEOUT_S = 3.0
SUBMITS = 6
PARAMS = {"base_image_url": "file:///nowhere.png", "brightness": 0.1}


@pytest.fixture
def broker() -> Iterator[KafkaBroker]:
    broker = KafkaBroker()
    broker.start()
    try:
        yield broker
    finally:
        _signal(broker, signal.SIGCONT)
        broker.stop()


def _signal(broker: KafkaBroker, sig: int) -> None:
    """SIGSTOP freezes the broker (it keeps its connections and answers nothing); SIGCONT thaws."""
    if broker.pid is not None:
        os.kill(broker.pid, sig)


def _submit(gateway: TaskGateway, results: list, i: int) -> None:
    started = time.monotonic()
    try:
        gateway.submit(TaskType.IMAGE_ADJUSTER, PARAMS, tenant_id="t",
                       idempotency_key=f"outage-{i}", webhook_url=None)
        outcome: object = "accepted"
    except DeliveryError as exc:
        outcome = exc
    results.append((outcome, time.monotonic() - started))


def test_concurrent_submits_to_a_frozen_broker_each_fail_within_one_deadline(broker):
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers,
                          topic_prefix=f"t{uuid.uuid4().hex[:10]}", partitions=1)
    ensure_topics(kafka)
    gateway = TaskGateway(kafka, ack_timeout_s=ACK_TIMEOUT_S)
    try:
        healthy: list = []
        _submit(gateway, healthy, -1)  # the broker answers: accepted, and the client is warm
        assert healthy[0][0] == "accepted", healthy

        _signal(broker, signal.SIGSTOP)
        results: list = []
        started = time.monotonic()
        threads = [threading.Thread(target=_submit, args=(gateway, results, i)) for i in range(SUBMITS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=SUBMITS * (ACK_TIMEOUT_S + 2))
        elapsed = time.monotonic() - started

        assert len(results) == SUBMITS, f"{SUBMITS - len(results)} submit(s) still waiting"
        assert all(isinstance(outcome, DeliveryError) for outcome, _ in results), results
        # Each one waited for its own acknowledgement: about one deadline in all, where queued
        # behind one another they took SUBMITS deadlines (18 s here).
        bound = ACK_TIMEOUT_S + 3.0
        assert max(took for _, took in results) < bound, results
        assert elapsed < bound, elapsed

        _signal(broker, signal.SIGCONT)  # the outage ends: a client's retry is accepted
        after: list = []
        deadline = time.monotonic() + 30
        while not (after and after[-1][0] == "accepted") and time.monotonic() < deadline:
            _submit(gateway, after, 0)  # the same Idempotency-Key: the same task
        assert after[-1][0] == "accepted", after
    finally:
        _signal(broker, signal.SIGCONT)
        gateway.close()
