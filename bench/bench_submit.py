"""Benchmark: submits per second through validation + Avro + produce, on one process.

Each submit is the real path: pydantic validation, Avro encoding with single-object framing,
CloudEvents headers, an idempotent ``acks=all`` produce with a delivery report, and on that
report the PENDING and QUEUED status events (three records per submit). The floor measured in
the same run produces the same number of pre-encoded records of the same sizes with bare
confluent-kafka and delivery reports. Also reported: the local broker's start time.

    .venv/bin/python bench/bench_submit.py [--count 200000] [--json]

Uses KAFKA_BOOTSTRAP_SERVERS when set, else starts a local broker (and times it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid
from contextlib import ExitStack

from confluent_kafka import Producer

from producers.examples import SEED_EXAMPLES
from producers.submit import _PRODUCER_DEFAULTS, TaskProducer, validate_params
from schemas.codec import EventCodec
from schemas.enums import TaskType
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def bench_floor(settings: KafkaSettings, values: list[bytes], count: int) -> float:
    """Bare confluent-kafka: the same records, pre-encoded, with delivery reports."""
    producer = Producer({**settings.client_config(), **_PRODUCER_DEFAULTS})
    topics = settings.topics
    delivered = 0

    def on_delivery(err, msg):
        nonlocal delivered
        delivered += err is None

    task_topic, status_topic = topics.task(TaskType.GENERATION), topics.status
    start = time.perf_counter()
    for i in range(count):
        key = str(uuid.uuid4())
        for topic, value in ((task_topic, values[0]), (status_topic, values[1]), (status_topic, values[2])):
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)
    elapsed = time.perf_counter() - start
    assert delivered == 3 * count, f"floor: {delivered} of {3 * count} delivered"
    return _rate(count, elapsed)


def bench_submit(settings: KafkaSettings, count: int) -> float:
    params = SEED_EXAMPLES[TaskType.GENERATION]
    producer = TaskProducer(settings)
    start = time.perf_counter()
    for _ in range(count):
        producer.submit(TaskType.GENERATION, params)
    producer.flush(120)
    elapsed = time.perf_counter() - start
    assert producer.stats.acknowledged == count, producer.stats
    return _rate(count, elapsed)


def micro(count: int) -> dict[str, float]:
    """Per-stage cost in microseconds (no broker)."""
    params = SEED_EXAMPLES[TaskType.GENERATION]
    start = time.perf_counter()
    for _ in range(count):
        validate_params(TaskType.GENERATION, params)
    validate_us = (time.perf_counter() - start) / count * 1e6
    producer_probe = sample_events()
    codec = EventCodec()
    start = time.perf_counter()
    for _ in range(count):
        for event in producer_probe:
            codec.encode(event)
    encode_us = (time.perf_counter() - start) / count * 1e6
    return {"validate_us": validate_us, "encode_3_records_us": encode_us}


def sample_events():
    from datetime import datetime, timezone

    from schemas.events import TASK_SUBMITTED_MODELS, Envelope, StatusChanged
    from schemas.enums import TaskStatus

    env = Envelope(
        event_id=str(uuid.uuid4()), task_id=str(uuid.uuid4()), task_type=TaskType.GENERATION,
        attempt=1, occurred_at=datetime.now(timezone.utc), source="bench",
    )
    params = validate_params(TaskType.GENERATION, SEED_EXAMPLES[TaskType.GENERATION])
    task = TASK_SUBMITTED_MODELS[TaskType.GENERATION](envelope=env, params=params)
    pending = StatusChanged(envelope=env, status=TaskStatus.PENDING)
    queued = StatusChanged(envelope=env, status=TaskStatus.QUEUED)
    return [task, pending, queued]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    report: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "count": args.count,
    }
    with ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            from state.devstack.kafka import KafkaBroker

            broker = stack.enter_context(KafkaBroker())
            report["broker_start_s"] = round(broker.start_seconds, 2)
            bootstrap = broker.bootstrap_servers
        settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}")
        ensure_topics(settings)
        report.update({k: round(v, 2) for k, v in micro(20_000).items()})
        codec = EventCodec()
        values = [codec.encode(e) for e in sample_events()]
        report["floor_submits_per_s"] = round(bench_floor(settings, values, args.count))
        report["submits_per_s"] = round(bench_submit(settings, args.count))
        report["ratio_to_floor"] = round(report["submits_per_s"] / report["floor_submits_per_s"], 3)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
