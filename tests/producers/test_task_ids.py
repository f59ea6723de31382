"""Idempotency-Key ids: stable per (tenant, key) within a deployment, not computable without its
IDEMPOTENCY_SECRET, and what the producer (and so the API) uses."""

from __future__ import annotations

import uuid

import pytest

from producers.submit import TaskProducer
from producers.task_ids import IDEMPOTENCY_NAMESPACE, IdempotencySettings, keyed_uuid, task_id_for
from schemas.kafka_settings import KafkaSettings

SECRET = b"deployment-secret-1"


def test_without_a_secret_the_id_is_the_historical_uuid5() -> None:
    assert task_id_for("order-17", "acme") == str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, "acme\x1forder-17"))
    assert task_id_for("order-17") == str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, "\x1forder-17"))


def test_a_keyed_id_is_stable_per_tenant_and_secret_and_unpredictable_without_it() -> None:
    keyed = task_id_for("order-17", "acme", SECRET)
    assert keyed == task_id_for("order-17", "acme", SECRET)  # the same key maps to the same id
    others = {task_id_for("order-17", "acme"), task_id_for("order-17", "acme", b"another secret"),
              task_id_for("order-17", "globex", SECRET), task_id_for("order-18", "acme", SECRET),
              task_id_for("acme\x1forder-17", None, SECRET)}
    assert keyed not in others and len(others) == 5
    parsed = uuid.UUID(keyed)
    assert str(parsed) == keyed and parsed.version == 4  # looks like any random task id
    assert keyed_uuid(IDEMPOTENCY_NAMESPACE, "acme\x1forder-17", SECRET) == parsed


def test_the_secret_comes_from_the_environment_and_reaches_the_producer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IDEMPOTENCY_SECRET", raising=False)
    assert IdempotencySettings().secret_bytes() is None
    monkeypatch.setenv("IDEMPOTENCY_SECRET", SECRET.decode())
    settings = IdempotencySettings()
    assert settings.secret_bytes() == SECRET and SECRET.decode() not in repr(settings)
    # No broker needed to name an id (as in test_submit_fast_path, the producer is not flushed).
    producer = TaskProducer(KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix="fake"))
    assert producer.task_id_for("order-17", "acme") == task_id_for("order-17", "acme", SECRET)


def test_a_generations_seed_is_keyed_with_the_same_secret() -> None:
    from api.routes.generations import generation_seed

    keyed = generation_seed("acme", "look-17", SECRET)
    assert keyed == generation_seed("acme", "look-17", SECRET)
    assert keyed not in (generation_seed("acme", "look-17"), generation_seed("globex", "look-17", SECRET))
