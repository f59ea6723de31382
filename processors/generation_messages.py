"""The records of the generations topic, read and written: what the ``orchestrate`` agent
(processors/orchestrator.py) takes in, and the headers of what it writes to the
generations-state topic.

The generations topic carries three kinds of record, keyed by generation id: a
``GenerationRequested`` (the producers and the API), a ``GenerationCancelRequested`` (the API),
and the final ``TaskState`` of each task of a generation (the lifecycle fold). Each is JSON with a
``content-type`` header; a record without one is recognised by its fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from generations.plan import GENERATION_CANCEL_CONTENT_TYPE, GENERATION_REQUEST_CONTENT_TYPE, GenerationCancelRequested, GenerationRequested
from generations.record import GENERATION_RECORD_CONTENT_TYPE, GenerationRecord
from processors.folding import STATE_CONTENT_TYPE, decode_state
from schemas.errors import ComputeError
from schemas.headers import json_record_headers
from state.lifecycle import TaskState


class BadGenerationRecord(ComputeError):
    """A record on the generations topic cannot be read (see the message). It is copied to
    ``<prefix>.generations.dlq`` with error headers and skipped; fix the writer."""


def _header(headers: Any, name: str) -> bytes | None:
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    for key, value in items:
        if key == name:
            return value if isinstance(value, bytes) else str(value).encode()
    return None


def _sniff(value: bytes) -> bytes:
    """The content type of a record that has no header: a request has a ``plan``, a task state a
    ``task_id`` and a ``status``, a cancel a ``generation_id`` and ``requested_at`` (no task)."""
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise BadGenerationRecord(f"no content-type header and not JSON ({exc})") from None
    if isinstance(doc, dict) and "plan" in doc:
        return GENERATION_REQUEST_CONTENT_TYPE
    if isinstance(doc, dict) and "task_id" in doc and "status" in doc:
        return STATE_CONTENT_TYPE
    if isinstance(doc, dict) and "generation_id" in doc and "requested_at" in doc and "task_id" not in doc:
        return GENERATION_CANCEL_CONTENT_TYPE
    raise BadGenerationRecord("no content-type header, and the JSON is neither a generation "
                              "request, a cancel nor a task state")


Incoming = GenerationRequested | GenerationCancelRequested | TaskState


def read_generation_message(key: bytes | str | None, value: bytes | None, headers: Any) -> Incoming:
    """Decode one record of the generations topic: a :class:`GenerationRequested`, a
    :class:`GenerationCancelRequested` or a final :class:`TaskState`, dispatched on its
    ``content-type`` header (sniffed when absent). Raise :class:`BadGenerationRecord` when it
    must be dead-lettered (unreadable, unknown type, no generation id, or keyed by something
    other than its generation id)."""
    if value is None:
        raise BadGenerationRecord("record has no value (a tombstone on the generations topic)")
    content_type = _header(headers, "content-type") or _sniff(value)
    try:
        if content_type == GENERATION_REQUEST_CONTENT_TYPE:
            decoded: Incoming = GenerationRequested.model_validate_json(value)
            generation_id = decoded.plan.generation_id
        elif content_type == GENERATION_CANCEL_CONTENT_TYPE:
            decoded = GenerationCancelRequested.model_validate_json(value)
            generation_id = decoded.generation_id
        elif content_type == STATE_CONTENT_TYPE:
            decoded = decode_state(value)  # type: ignore[assignment]
            generation_id = decoded.generation_id  # type: ignore[union-attr]
            if generation_id is None:
                raise BadGenerationRecord(f"task state {decoded.task_id} has no generation_id")
        else:
            raise BadGenerationRecord(f"unknown content-type {content_type!r} (expected "
                                      f"{GENERATION_REQUEST_CONTENT_TYPE!r}, {GENERATION_CANCEL_CONTENT_TYPE!r}"
                                      f" or {STATE_CONTENT_TYPE!r})")
    except ComputeError:
        raise
    except (ValidationError, ValueError, KeyError, TypeError) as exc:
        raise BadGenerationRecord(f"cannot decode a {content_type.decode(errors='replace')} "
                                  f"record: {type(exc).__name__}: {exc}") from None
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    if key != generation_id:
        raise BadGenerationRecord(f"record keyed {key!r} belongs to generation {generation_id}: "
                                  "the generations topic is keyed by generation id")
    return decoded


def record_headers(record: GenerationRecord) -> list[tuple[str, bytes]]:
    """CloudEvents binary-mode headers of a generation record on the generations.state topic."""
    gid = record.generation_id
    return json_record_headers(event_id=f"{gid}/{record.version}", source="processors",
                               ce_type="compute.generations.GenerationRecord", subject=gid,
                               content_type=GENERATION_RECORD_CONTENT_TYPE)
