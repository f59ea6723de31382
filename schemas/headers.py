"""CloudEvents Kafka binary-mode headers and W3C trace context on every record.

The Avro body is the event's data; the headers carry the CloudEvents attributes so that any
tool (kcat, Kafka UI) can tell what a record is without decoding it:

    ce_specversion  "1.0"
    ce_id           the event_id
    ce_source       "/compute/<source>" (who wrote it)
    ce_type         "compute.events.<RecordName>" (the Avro record name)
    ce_subject      the task id
    ce_time         RFC 3339 occurred_at
    content-type    "application/avro" (+ framing)
    traceparent     W3C trace context, "00-<trace-id>-<span-id>-01"
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from datetime import datetime

SPEC_VERSION = b"1.0"
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
Headers = list[tuple[str, bytes]]


def new_traceparent(trace_id: str | None = None) -> str:
    """A fresh span; in the trace ``trace_id`` when given (continuing a task's trace)."""
    trace = trace_id or os.urandom(16).hex()
    return f"00-{trace}-{os.urandom(8).hex()}-01"


def trace_id_of(traceparent: str | None) -> str | None:
    match = _TRACEPARENT.match(traceparent or "")
    return match.group(1) if match else None


def cloudevent_headers(
    *,
    event_id: str,
    source: str,
    avro_name: str,
    subject: str,
    occurred_at: datetime,
    framing: str,
    traceparent: str,
) -> Headers:
    return [
        ("ce_specversion", SPEC_VERSION),
        ("ce_id", event_id.encode()),
        ("ce_source", f"/compute/{source}".encode()),
        ("ce_type", avro_name.encode()),
        ("ce_subject", subject.encode()),
        ("ce_time", occurred_at.isoformat().encode()),
        ("content-type", f"application/avro; framing={framing}".encode()),
        ("traceparent", traceparent.encode()),
    ]


def header_dict(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Headers as text, for logging and inspection (last value of a repeated key wins)."""
    out: dict[str, str] = {}
    for key, value in headers or ():
        out[key] = value.decode("utf-8", "replace") if value is not None else ""
    return out
