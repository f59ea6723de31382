"""Every process that writes Avro publishes its schemas to ``<prefix>.schemas`` at start-up, so a
reader that relies on the store alone resolves what a worker or the processors wrote
(docs/SCHEMA_EVOLUTION.md). The Java reader of test_java_contract.py does the same from Java."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpu_consumers.storage import FileStore
from schemas import avro_files
from schemas.codec import EventCodec
from schemas.enums import TaskStatus, TaskType
from schemas.events import Envelope, StatusChanged, TaskSubmitted, all_event_models
from schemas.kafka_settings import KafkaSettings
from schemas.schema_store import SchemaStoreReader, store_key
from schemas.topic_admin import ensure_topics
from tests.gpu_consumers.runtime_helpers import Running, Scripted, make_worker
from tests.kafka_helpers import wait_for
from tests.processors.test_lifecycle_app import App

pytestmark = pytest.mark.integration


def fingerprint(name: str) -> bytes:
    return avro_files.fingerprint(avro_files.parsed_schema(name))


def test_the_store_key_is_the_framed_fingerprint_in_hex() -> None:
    """The bytes 2..9 of a record, in hex (little-endian: test_java_contract.py has Java's
    ``ByteBuffer.order(LITTLE_ENDIAN).putLong(parsingFingerprint64(schema))`` agree)."""
    fp = fingerprint(StatusChanged.avro_name)
    framed = EventCodec().encode(StatusChanged(envelope=Envelope.new(
        "6f1c1f0e-4b1a-4c3e-9d2f-0a1b2c3d4e5f", TaskType.IMAGE_ADJUSTER, source="t"), status=TaskStatus.QUEUED))
    assert store_key(fp) == framed[2:10].hex().encode()


def test_a_worker_publishes_its_schemas_at_start(kafka_settings: KafkaSettings, results_dir: Path) -> None:
    ensure_topics(kafka_settings)
    assert SchemaStoreReader(kafka_settings)(fingerprint(StatusChanged.avro_name)) is None  # empty

    stats = Running(make_worker(kafka_settings, Scripted(), FileStore(results_dir)), max_tasks=0).join()

    assert stats.handled == 0  # it wrote no status: the store was filled at start-up
    reader = SchemaStoreReader(kafka_settings)
    for model in all_event_models():
        assert reader(fingerprint(model.avro_name)) == avro_files.schema_json(model.avro_name), model.avro_name


def test_the_processors_publish_their_schemas_at_start(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    ensure_topics(kafka_settings)
    wanted = [fingerprint(StatusChanged.avro_name),
              *(fingerprint(m.avro_name) for m in all_event_models() if issubclass(m, TaskSubmitted))]
    assert SchemaStoreReader(kafka_settings)(wanted[0]) is None
    app = App(kafka_settings, tmp_path)
    app.start()
    try:
        wait_for(lambda: app.check_alive() or all(SchemaStoreReader(kafka_settings)(fp) for fp in wanted),
                 "the processors' schemas in the store", 60.0)
    finally:
        assert app.stop() == 0, app.tail()
