"""CloudEvents Kafka binary-mode headers and W3C trace context on every record.

The Avro body is the event's data; the headers carry the CloudEvents attributes so that any
tool (kcat, Kafka UI) can tell what a record is without decoding it:

    ce_specversion  "1.0"
    ce_id           the event_id
    ce_source       "/compute/<source>" (who wrote it)
    ce_type         "compute.events.<RecordName>" (the Avro record name)
    traceparent     W3C trace context, "00-<trace-id>-<span-id>-01"

Exactly the required attributes and the trace, nothing the record already says: the optional
``ce_subject`` would repeat the key (the task id), ``ce_time`` the record's timestamp (the
producer's clock at produce time; ``occurred_at`` is in the body), and ``content-type`` what the
body's first bytes say (the framing) and ``ce_type`` (the schema). Each header is bytes on the
wire and work in librdkafka on both ends: those three were 142 of a status record's ~450 bytes
(docs/DECISIONS.md). The JSON records of the state and generations topics do carry a
``content-type``: there it tells their kinds apart.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import uuid
from collections.abc import Callable, Iterable

SPEC_VERSION = b"1.0"
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
Headers = list[tuple[str, bytes]]
# On a CancelRequested: the canceller also wrote this terminal status (CANCELLED) for the task,
# which had not started; a worker reaching the task's record then skips it without a status of
# its own, so the status topic holds one terminal status per attempt.
STATUS_WRITTEN_HEADER = "compute-status-written"

# --------------------------------------------------------------------------- ids
#
# Event ids, generated task ids and trace/span ids must be unique, not secret: nobody gains
# anything by predicting one (an idempotency key, not a guessable id, guards a task; access is
# the broker's ACLs). So they come from a Mersenne Twister instead of os.urandom: three times
# cheaper per id, which matters at tens of thousands of events per second. The generator is
# this module's own (a caller's random.seed(42) - e.g. a handler making a generation
# reproducible - cannot make it repeat ids), seeded with 2496 bytes from os.urandom, and
# reseeded in a forked child so that a parent and its children never share a sequence. Threads
# may share it (getrandbits is one call under the GIL). The chance of two equal 122-bit random
# ids stays the birthday bound of a true random source.
_rng = random.Random()  # seeded from os.urandom
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_rng.seed)
_bits = _rng.getrandbits
# UUID version 4 (bits 76-79 = 0100) and the RFC 4122 variant (bits 62-63 = 10).
_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID4_SET = (0x4 << 76) | (0x2 << 62)


def new_uuid4() -> str:
    """A random (version 4) UUID as canonical lower-case text, like ``str(uuid.uuid4())``."""
    h = (_bits(128) & _UUID4_CLEAR | _UUID4_SET).to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_trace_id() -> str:
    """A W3C trace id: 32 lower-case hex digits, never all zero (which means "no trace")."""
    return f"{_bits(128) or 1:032x}"


def new_traceparent(trace_id: str | None = None) -> str:
    """A fresh span; in the trace ``trace_id`` when given (continuing a task's trace)."""
    return new_traceparent_bytes(trace_prefix(trace_id or new_trace_id())).decode()


def trace_prefix(trace_id: str) -> bytes:
    """``b"00-<trace_id>-"``: what every traceparent header in the trace ``trace_id`` starts with."""
    return f"00-{trace_id}-".encode()


def new_traceparent_bytes(prefix: bytes) -> bytes:
    """A fresh span in the trace of ``prefix`` (:func:`trace_prefix`), encoded as the header
    carries it: for a writer that continues one trace over several records."""
    return prefix + (_bits(64) or 1).to_bytes(8, "big").hex().encode() + b"-01"


def trace_id_of(traceparent: str | None) -> str | None:
    match = _TRACEPARENT.match(traceparent or "")
    return match.group(1) if match else None


def task_trace_id(task_id: str) -> str:
    """The trace of a task that arrived without a (valid) ``traceparent``: the task id's 128 bits
    as 32 lower-case hex digits (the UUID without its dashes), so every writer of the task's
    statuses (workers, the processors' lease timer, the API's cancel) lands in one trace without
    telling each other. A task id that is not a UUID (or the nil UUID, which W3C reserves for
    "no trace") hashes to one with SHA-256. docs/WIRE_FORMAT.md, "Headers"."""
    try:
        digits = uuid.UUID(task_id).hex
    except ValueError:
        digits = "0" * 32
    if digits == "0" * 32:
        digits = hashlib.sha256(task_id.encode()).hexdigest()[:32]
    return digits


def cloudevent_headers(*, event_id: str, source: str, avro_name: str, traceparent: str) -> Headers:
    return header_builder(avro_name, source)(event_id, traceparent)


HeaderBuilder = Callable[[str, str], Headers]
RawHeaderBuilder = Callable[[bytes, bytes], Headers]
_BUILDERS: dict[tuple[str, str], HeaderBuilder] = {}
_RAW_BUILDERS: dict[tuple[str, str], RawHeaderBuilder] = {}


def json_record_headers(*, event_id: str, source: str, ce_type: str, subject: str, content_type: bytes) -> Headers:
    """CloudEvents binary-mode headers of a JSON record (the state and generations topics): the
    required attributes, the key as ``ce_subject``, and the ``content-type`` that tells the
    topic's record kinds apart. No trace: these records are state, not events of a task."""
    return [("ce_specversion", SPEC_VERSION), ("ce_id", event_id.encode()),
            ("ce_source", f"/compute/{source}".encode()), ("ce_type", ce_type.encode()),
            ("ce_subject", subject.encode()), ("content-type", content_type)]


def raw_header_builder(avro_name: str, source: str) -> RawHeaderBuilder:
    """``build(event_id, traceparent)``, each value already encoded as the header carries it: the
    headers of :func:`cloudevent_headers` for one record type and source. The constant ones (spec
    version, source, type) are encoded once here. Cached: one builder per combination. The one
    place that lays the headers out."""
    key = (avro_name, source)
    cached = _RAW_BUILDERS.get(key)
    if cached is not None:
        return cached
    spec = ("ce_specversion", SPEC_VERSION)
    ce_source = ("ce_source", f"/compute/{source}".encode())
    ce_type = ("ce_type", avro_name.encode())

    def build(event_id: bytes, traceparent: bytes) -> Headers:
        return [spec, ("ce_id", event_id), ce_source, ce_type, ("traceparent", traceparent)]

    return _RAW_BUILDERS.setdefault(key, build)


def header_builder(avro_name: str, source: str) -> HeaderBuilder:
    """``build(event_id, traceparent)``: :func:`raw_header_builder` taking text. Cached like it."""
    key = (avro_name, source)
    cached_text = _BUILDERS.get(key)
    if cached_text is not None:
        return cached_text
    raw = raw_header_builder(avro_name, source)

    def build(event_id: str, traceparent: str) -> Headers:
        return raw(event_id.encode(), traceparent.encode())

    return _BUILDERS.setdefault(key, build)


def header_dict(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Headers as text, for logging and inspection (last value of a repeated key wins)."""
    out: dict[str, str] = {}
    for key, value in headers or ():
        out[key] = value.decode("utf-8", "replace") if value is not None else ""
    return out
