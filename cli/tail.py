"""Read any of our topics and decode each record to JSON (``computectl tail``)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

from schemas.codec import EventCodec
from schemas.enums import TaskType
from schemas.errors import DecodeError
from schemas.headers import header_dict
from schemas.kafka_settings import KafkaSettings
from schemas.topics import DLQ_SUFFIX


def resolve_topic(settings: KafkaSettings, name: str) -> str:
    """Accept a full topic name or a short alias: status, control, state, evaluations, schemas,
    generations, generations.state, a task type (generation, video-generation...), each optionally followed by ``.dlq``."""
    topics = settings.topics
    base, dlq = (name[: -len(DLQ_SUFFIX)], True) if name.endswith(DLQ_SUFFIX) else (name, False)
    aliases = {
        "status": topics.status,
        "control": topics.control,
        "state": topics.state,
        "evaluations": topics.evaluations,
        "schemas": topics.schemas,
        "generations": topics.generations,
        "generations.state": topics.generations_state,
    }
    if base in aliases:
        full = aliases[base]
    elif "." in base:
        full = base
    else:
        full = topics.task(TaskType.parse(base))
    return topics.dlq(full) if dlq else full


def decode_record(codec: EventCodec, msg: Any) -> dict[str, Any]:
    """One record as a JSON-ready dict; undecodable values are shown raw with the reason."""
    out: dict[str, Any] = {
        "topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "key": msg.key().decode("utf-8", "replace") if msg.key() else None,
        "headers": header_dict(msg.headers()),
    }
    value = msg.value()
    if msg.topic().endswith(".schemas"):
        out["value"] = value.decode() if value else None
        return out
    content_type = out["headers"].get("content-type", "")
    if content_type.startswith("application/json"):  # state documents, generation records
        out["type"] = content_type.partition("format=")[2] or "json"
        try:
            out["value"] = json.loads(value) if value else None
        except ValueError as exc:
            out["error"] = f"not JSON: {exc}"
            out["value_base64"] = base64.b64encode(value or b"").decode()
        return out
    try:
        name, record = codec.decode_dict(value)
        out["type"] = name
        out["value"] = _jsonable(record)
    except DecodeError as exc:
        out["type"] = None
        out["error"] = str(exc)
        out["value_base64"] = base64.b64encode(value or b"").decode()
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def tail(
    settings: KafkaSettings,
    topic: str,
    *,
    codec: EventCodec,
    from_beginning: bool = False,
    max_records: int | None = None,
    idle_timeout_s: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield decoded records; stop after ``max_records`` or ``idle_timeout_s`` without one."""
    consumer = Consumer(
        {
            **settings.client_config(),
            "group.id": "computectl-tail",  # assign() only: never joins or commits
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        if meta.error is not None:
            raise DecodeError(f"topic {topic}: {meta.error.str()}")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in meta.partitions])
        seen = 0
        last = time.monotonic()
        while max_records is None or seen < max_records:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                    return
                continue
            last = time.monotonic()
            seen += 1
            yield decode_record(codec, msg)
    finally:
        consumer.close()
