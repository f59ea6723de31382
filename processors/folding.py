"""Status records -> folded task states, in batches. Pure: no Kafka, no Faust, no clock.

Both the Faust agent (``processors/app.py``) and the benchmark's plain confluent-kafka loop
(``bench/bench_fold.py``) call :func:`fold_batch`, so the two differ only in the framework around
the same work. The rules themselves are :func:`state.lifecycle.fold`; this module adds what a
stream needs around them:

* decoding (``schemas.codec.EventCodec``) and the record checks that decide dead-lettering: a
  record that is not a ``StatusChanged``, breaks the contract, or whose key is not its task id;
* batching: every record of the batch is folded in order, but each task's state is *published*
  once per batch, with the version it reached (the Kafka Streams record-cache idea: the state
  topic is compacted, so intermediate versions within one batch carry no information a reader
  of the latest state needs);
* the state's JSON document: the value of the ``tasks`` table, its changelog and the compacted
  state topic, byte-identical (see docs/PROCESSORS.md, "The state topic").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.codec import EventCodec
from schemas.enums import ErrorCode, TaskStatus, TaskType
from schemas.errors import ComputeError
from schemas.events import StatusChanged
from state.lifecycle import TaskState, fold

# The state document's format; a reader that meets a higher major number must stop and upgrade.
STATE_FORMAT = 1
STATE_CONTENT_TYPE = b"application/json; format=compute.TaskState/1"

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_loads = json.loads
_parse_time = datetime.fromisoformat


class BadStatusRecord(ComputeError):
    """A status record cannot be folded (see the message). It is copied to the status DLQ with
    error headers and skipped; fix the writer that produced it."""


@dataclass(frozen=True, slots=True)
class Changed:
    """A task whose state a batch changed: publish ``document`` keyed by ``task_id``."""

    task_id: str
    partition: int
    state: TaskState
    document: bytes


@dataclass(slots=True)
class BatchOutcome:
    changed: list[Changed] = field(default_factory=list)
    # (index of the record in the batch, why it was dead-lettered)
    dead: list[tuple[int, Exception]] = field(default_factory=list)


# --------------------------------------------------------------------------- the document


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _jsonable(value: object) -> object:
    """A result as JSON: pydantic models (``TaskResult``) as their JSON dump; JSON as it is."""
    dump = getattr(value, "model_dump", None)
    return value if dump is None else dump(mode="json")


def state_to_json(state: TaskState) -> dict[str, Any]:
    """The state topic's document for ``state`` (field list in docs/PROCESSORS.md)."""
    return {
        "format": STATE_FORMAT,
        "task_id": state.task_id,
        "task_type": None if state.task_type is None else state.task_type.value,
        "status": state.status.value,
        "attempt": state.attempt,
        "progress": state.progress,
        "version": state.version,
        "created_at": state.created_at.isoformat(),
        "queued_at": _time(state.queued_at),
        "started_at": _time(state.started_at),
        "completed_at": _time(state.completed_at),
        "updated_at": state.updated_at.isoformat(),
        "last_event_id": state.last_event_id,
        "message": state.message,
        "result": None if state.result is None else _jsonable(state.result),
        "error_code": None if state.error_code is None else state.error_code.value,
        "error_message": state.error_message,
        "generation_id": state.generation_id,
        "stopped_attempts": sorted(state.stopped_attempts),
    }


def encode_state(state: TaskState) -> bytes:
    return _dumps(state_to_json(state)).encode()


def _maybe_time(value: str | None) -> datetime | None:
    return None if value is None else _parse_time(value)


def state_from_json(doc: dict[str, Any]) -> TaskState:
    """Inverse of :func:`state_to_json` (a result stays the JSON object it was published as)."""
    if doc.get("format", STATE_FORMAT) > STATE_FORMAT:
        raise BadStatusRecord(
            f"task {doc.get('task_id')}: state document format {doc['format']} is newer than "
            f"{STATE_FORMAT}; upgrade this processor"
        )
    task_type, error_code = doc["task_type"], doc["error_code"]
    return TaskState(
        task_id=doc["task_id"],
        task_type=None if task_type is None else TaskType(task_type),
        status=TaskStatus(doc["status"]),
        attempt=doc["attempt"],
        progress=doc["progress"],
        version=doc["version"],
        created_at=_parse_time(doc["created_at"]),
        queued_at=_maybe_time(doc["queued_at"]),
        started_at=_maybe_time(doc["started_at"]),
        completed_at=_maybe_time(doc["completed_at"]),
        updated_at=_parse_time(doc["updated_at"]),
        last_event_id=doc["last_event_id"],
        message=doc["message"],
        result=doc["result"],
        error_code=None if error_code is None else ErrorCode(error_code),
        error_message=doc["error_message"],
        generation_id=doc.get("generation_id"),  # absent from documents written before it
        stopped_attempts=frozenset(doc.get("stopped_attempts", ())),  # likewise
    )


def decode_state(document: bytes | None) -> TaskState | None:
    return None if document is None else state_from_json(_loads(document))


# --------------------------------------------------------------------------- the batch fold


def read_status(codec: EventCodec, key: bytes | str | None, value: bytes | None) -> StatusChanged:
    """Decode one status record and check that it is keyed by its task id; raise
    :class:`BadStatusRecord` (or the codec's ``DecodeError``) when it must be dead-lettered."""
    if value is None:
        raise BadStatusRecord("status record has no value (a tombstone on the status topic)")
    event = codec.decode(value, expect=StatusChanged)
    task_id = event.envelope.task_id
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    if key != task_id:
        raise BadStatusRecord(
            f"status record keyed {key!r} carries task {task_id}: records must be keyed by their "
            "task id so that one task's events share a partition"
        )
    return event  # type: ignore[return-value]


def fold_batch(
    codec: EventCodec,
    records: Sequence[tuple[bytes | str | None, bytes | None, int]],
    load: Callable[[str], TaskState | None],
) -> BatchOutcome:
    """Fold ``records`` (``(key, value, partition)`` in partition order) onto the states that
    ``load(task_id)`` returns (None: a new task). Each task is loaded at most once."""
    outcome = BatchOutcome()
    states: dict[str, TaskState | None] = {}
    before: dict[str, int] = {}
    partitions: dict[str, int] = {}
    for index, (key, value, partition) in enumerate(records):
        try:
            event = read_status(codec, key, value)
            task_id = event.envelope.task_id
            if task_id in states:
                current = states[task_id]
            else:
                current = states[task_id] = load(task_id)
                before[task_id] = 0 if current is None else current.version
            states[task_id] = fold(current, event)
            partitions[task_id] = partition
        except ComputeError as exc:  # DecodeError, BadStatusRecord, InvalidStatusEvent
            outcome.dead.append((index, exc))
    for task_id, state in states.items():
        if state is not None and state.version != before[task_id]:
            outcome.changed.append(
                Changed(task_id, partitions[task_id], state, encode_state(state))
            )
    return outcome
