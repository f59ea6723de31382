"""The submission client: validate → serialize → produce, idempotently.

``TaskProducer.submit`` checks a task against its contract, produces it to its per-type topic
keyed by task id (idempotent producer, ``acks=all``), and once the broker has acknowledged it
emits PENDING then QUEUED on the status topic. Nothing is produced for an invalid task.

A caller-supplied idempotency key always maps to the same task id (``producers/task_ids.py``: of
tenant + key, keyed with ``IDEMPOTENCY_SECRET`` when set), so a repeated submit can never become
a second task: this producer drops a repeat it has already sent, and any other producer's repeat
(with the same secret) carries the same id, which workers and the lifecycle fold treat as the
same task.

The records are written without building their pydantic events: the params are the validated
model, everything else is an id, a time or a value checked here, and the bytes come from
templates made by the codec's own writer (``producers/submit_records.py``; tests check them
byte-for-byte against the codec's encoding of the validated events). That, with one clock reading
per batch of statuses, is what lets one process submit tens of thousands of tasks a second
(docs/PERFORMANCE.md).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from pydantic import TypeAdapter, ValidationError

from producers.errors import DeliveryError, TaskTooLargeError
from producers.submit_records import SubmitRecords, entity_field
from producers.task_ids import IdempotencySettings, task_id_for
from schemas.avro_writer import micros_varint
from schemas.codec import EventCodec
from schemas.emit import produce_record
from schemas.enums import TaskType
from schemas.errors import TaskValidationError
from schemas.events import Orchestration, PositiveInt, StatusChanged, all_event_models
from schemas.headers import (
    new_trace_id,
    new_traceparent_bytes,
    new_uuid4,
    raw_header_builder,
    trace_prefix,
)
from schemas.kafka_settings import KafkaSettings
from schemas.records import AVRO_INT_MAX, UuidStr, WebhookUrl
from schemas.schema_store import publish_schemas
from schemas.task_params import PARAMS_MODELS

# librdkafka settings for the task producer. Idempotence implies acks=all and bounded in-flight
# requests (5). linger.ms 0.2: a lone submit waits a fifth of a millisecond (5 ms of linger was
# most of a single task's round trip, issue 19). With 0, its PENDING and QUEUED, produced back to
# back once the task record is acknowledged, left in two requests four times in five (librdkafka's
# broker thread took the first alone), and each woke every reader of the status topic. A burst
# still batches, adaptively: while 5 requests are in flight to a partition's leader, what is
# produced meanwhile goes in the next request (docs/PERFORMANCE.md, "Latency defaults" and
# "Figures of 2026-12-07, 18:11"). The API's producers, which wait for each acknowledgement,
# use it too.
LINGER_MS = 0.2
_PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": LINGER_MS,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 500_000,
}

# submit() serves delivery reports (which release PENDING/QUEUED) once every _POLL_EVERY submits
# or once _POLL_INTERVAL_S has passed since the last poll, whichever comes first: a burst pays
# for one poll per batch, a trickle of submits still polls on every one, and acks
# come no faster than linger.ms anyway. flush()/poll()/close() always serve everything.
_POLL_EVERY = 32
_POLL_INTERVAL_S = 0.002

# Record templates kept per producer beyond the ten of plain submits (attempt 1, the producer's
# origin, no generation): one per params model, attempt, origin and with/without a generation id.
_RECORDS_CAPACITY = 1024

# produce()'s arguments are passed by position, (topic, value, key, partition, callback,
# on_delivery, timestamp, headers): parsing keywords is a quarter of the call, three calls a
# submit (docs/PERFORMANCE.md). -1 is "partition by key", 0 "timestamp now"; the delivery callback goes in ``callback``
# (``on_delivery`` is its alias, used only when ``callback`` is not given at all).
_BY_KEY, _NOW = -1, 0

# librdkafka's default message.max.bytes (a record over it is refused before it is sent).
_LIBRDKAFKA_MAX_MESSAGE_BYTES = 1_000_000

_monotonic = time.monotonic
_time_ns = time.time_ns


@dataclass(frozen=True)
class Origin:
    """Where a task comes from (the envelope's origin fields; ``version``: origin_version, the
    originating system's version)."""

    instance: str | None = None
    zone: str | None = None
    tenant_id: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        for name in ("instance", "zone", "tenant_id", "version"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"Origin.{name} must be text or None (got {type(value).__name__})")


@dataclass
class ProducerStats:
    submitted: int = 0
    acknowledged: int = 0
    deduplicated: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    too_large: list[str] = field(default_factory=list)  # of the failures: refused as too large


def validate_params(task_type: TaskType | str, params: Mapping[str, Any] | Any) -> Any:
    """Return the validated params model; raise TaskValidationError naming each bad field."""
    if not isinstance(task_type, TaskType):
        try:
            task_type = TaskType.parse(task_type)
        except ValueError as exc:
            raise TaskValidationError(str(task_type), [("task_type", str(exc))]) from None
    model = PARAMS_MODELS[task_type]
    if isinstance(params, model):
        return params
    try:
        # model.model_validate(params), minus its Python wrapper
        return model.__pydantic_validator__.validate_python(params)
    except ValidationError as exc:
        raise TaskValidationError(task_type.value, _problems(exc)) from None


def _problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """(field path, rule broken) of each error; paths start with ``prefix`` when given."""
    problems = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        problems.append((f"{prefix}.{path}" if prefix and path else prefix or path or "(task)", err["msg"]))
    return problems


def _unencodable(value: Any, path: str = "") -> list[tuple[str, str]]:
    """(field path, rule) of every text in ``value`` that UTF-8 cannot encode."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return [(path or "(task)", "must be valid Unicode text (it holds a lone surrogate)")]
        return []
    if isinstance(value, dict):
        return [p for k, v in value.items()
                for p in _unencodable(k, path) + _unencodable(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _unencodable(v, f"{path}[{i}]")]
    return []


# The envelope fields a caller may set besides the params, checked by the same rules as the
# Envelope / TaskSubmitted models (only when given: the defaults need no checking).
_TASK_ID = TypeAdapter(UuidStr)
_WEBHOOK_URL = TypeAdapter(WebhookUrl)
_ATTEMPT = TypeAdapter(PositiveInt)


def _check_arguments(
    task_type: TaskType,
    idempotency_key: Any,
    orchestration: Any,
    webhook_url: Any,
    origin: Any,
    task_id: Any,
    attempt: Any,
) -> tuple[str | None, Orchestration | None, str | None, str | None, int]:
    """Validate what submit() takes besides the params; raise TaskValidationError naming the
    argument. Returns the values as the event carries them (a task id as canonical UUID text)."""

    def check(name: str, adapter: TypeAdapter[Any], value: Any) -> Any:
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            raise TaskValidationError(task_type.value, [(name, e["msg"]) for e in exc.errors()]) from None

    if idempotency_key is not None and not isinstance(idempotency_key, str):
        raise TaskValidationError(task_type.value, [("idempotency_key", "must be text")])
    if idempotency_key is not None and not idempotency_key.isascii():  # it names the task id
        problems = _unencodable(idempotency_key, "idempotency_key")
        if problems:
            raise TaskValidationError(task_type.value, problems)
    if orchestration is not None and not isinstance(orchestration, Orchestration):
        try:
            orchestration = Orchestration.model_validate(orchestration)
        except ValidationError as exc:
            raise TaskValidationError(task_type.value, _problems(exc, "orchestration")) from None
    if webhook_url is not None:
        webhook_url = check("webhook_url", _WEBHOOK_URL, webhook_url)
    if origin is not None and not isinstance(origin, Origin):
        raise TaskValidationError(task_type.value, [("origin", "must be an Origin")])
    if task_id is not None:
        task_id = check("task_id", _TASK_ID, task_id)
    if type(attempt) is not int or not 0 < attempt <= AVRO_INT_MAX:
        attempt = check("attempt", _ATTEMPT, attempt)
    return idempotency_key, orchestration, webhook_url, task_id, attempt


class TaskProducer:
    """One per process; not thread-safe (confluent-kafka's producer is, this bookkeeping isn't),
    except that with ``serve_reports=False`` one other thread may call :meth:`poll` while one
    thread at a time submits (the API's gateway: its submits never wait on each other)."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        codec: EventCodec | None = None,
        source: str = "producer",
        origin: Origin = Origin(),
        dedupe_capacity: int = 100_000,
        producer_config: Mapping[str, Any] | None = None,
        idempotency_secret: bytes | None = None,
        serve_reports: bool = True,
    ) -> None:
        """``idempotency_secret``: keys Idempotency-Key task ids (default: ``IDEMPOTENCY_SECRET``).
        ``serve_reports=False``: :meth:`submit` never serves delivery reports itself; the owner
        calls :meth:`poll` from a thread of its own (delivery callbacks then run only there)."""
        if not isinstance(source, str) or not source:
            raise ValueError(f"source must be non-empty text (got {source!r})")
        if not isinstance(origin, Origin):
            raise TypeError(f"origin must be an Origin (got {type(origin).__name__})")
        self._settings = settings
        self._topics = settings.topics
        self._task_topics = {t: self._topics.task(t) for t in TaskType}
        self._status_topic = self._topics.status
        self._codec = codec or EventCodec()
        self._source = source
        self._origin = origin
        self.idempotency_secret = idempotency_secret or IdempotencySettings().secret_bytes()
        self._dedupe_capacity = dedupe_capacity
        self._sent: OrderedDict[str, None] = OrderedDict()
        # Tasks the broker acknowledged whose PENDING/QUEUED are not produced yet: (task id as
        # text and bytes, trace prefix, the status templates, generation id bytes or b"", the
        # encoded entity id). Delivery
        # reports only collect them: librdkafka aborts on a produce from inside a delivery report
        # served by flush(), so the statuses are produced right after each poll.
        self._acknowledged: list[tuple[str, bytes, bytes, tuple[tuple[bytes, ...], ...], bytes, bytes]] = []
        self._since_poll = 0
        self._polled_at = _monotonic()
        # Never reached without serve_reports: the submit path's poll check stays one comparison.
        self._poll_every = _POLL_EVERY if serve_reports else float("inf")
        self._poll_interval_s = _POLL_INTERVAL_S if serve_reports else float("inf")
        self.stats = ProducerStats()
        # Record templates (producers/submit_records.py): those of plain submits by params model,
        # the others by (params model, attempt, origin, with a generation id).
        self._plain_records: dict[type, SubmitRecords] = {}
        self._records: dict[tuple[type, int, Origin, bool], SubmitRecords] = {}
        self._status_headers = raw_header_builder(StatusChanged.avro_name, source)
        config = {**settings.producer_config(), **_PRODUCER_DEFAULTS, **(producer_config or {})}
        self._producer = Producer(config)
        # Only to say the limit in TaskTooLargeError (librdkafka enforces it).
        self._max_message_bytes = int(config.get("message.max.bytes", _LIBRDKAFKA_MAX_MESSAGE_BYTES))
        if self._codec.framing.value == "single-object":
            publish_schemas(self._producer, settings, [m.avro_name for m in all_event_models()])

    # -- public API ------------------------------------------------------------------------

    def task_id_for(self, idempotency_key: str, tenant_id: str | None) -> str:
        """The id :meth:`submit` gives a task of ``tenant_id`` with ``idempotency_key``."""
        return task_id_for(idempotency_key, tenant_id, self.idempotency_secret)

    def submit(
        self,
        task_type: TaskType | str,
        params: Mapping[str, Any] | Any,
        *,
        idempotency_key: str | None = None,
        orchestration: Orchestration | None = None,
        webhook_url: str | None = None,
        origin: Origin | None = None,
        task_id: str | None = None,
        attempt: int = 1,
        on_result: Callable[[KafkaError | None], None] | None = None,
        entity_id: str | None = None,
    ) -> str:
        """Validate and produce one task; return its id. Delivery is asynchronous: call
        :meth:`flush` to wait for the broker (it raises DeliveryError on failures), or pass
        ``on_result``, called with None once the broker acknowledged the task record or with the
        KafkaError it failed with (a repeat already sent is not produced again: no call then). Raises
        TaskValidationError for an invalid task and TaskTooLargeError for one over the
        producer's ``message.max.bytes``: nothing is produced then. ``entity_id``: the caller's
        business entity the task is about (opaque text), carried on every event of the task."""
        valid = validate_params(task_type, params)
        task_type = valid.task_type
        if (idempotency_key is not None or orchestration is not None or webhook_url is not None
                or origin is not None or task_id is not None
                or type(attempt) is not int or not 0 < attempt <= AVRO_INT_MAX):
            idempotency_key, orchestration, webhook_url, task_id, attempt = _check_arguments(
                task_type, idempotency_key, orchestration, webhook_url, origin, task_id, attempt
            )
        if entity_id is not None and not isinstance(entity_id, str):
            raise TaskValidationError(task_type.value, [("entity_id", "must be text")])
        origin = origin or self._origin
        if task_id is None:
            task_id = (task_id_for(idempotency_key, origin.tenant_id, self.idempotency_secret)
                       if idempotency_key else new_uuid4())
        dedupe_key = f"{task_id}/{attempt}"
        sent = self._sent
        if dedupe_key in sent:
            sent.move_to_end(dedupe_key)
            self.stats.deduplicated += 1
            return task_id
        # Every value below was validated (params, arguments) or is made here (ids, time).
        now = _time_ns() // 1000  # occurred_at, in microseconds since the epoch
        event_id, tid, trace = new_uuid4().encode(), task_id.encode(), trace_prefix(new_trace_id())
        try:
            if attempt == 1 and origin is self._origin and orchestration is None:
                records = self._plain_records.get(type(valid)) or self._records_for(valid, 1, origin, False)
            else:
                records = self._records_for(valid, attempt, origin, orchestration is not None)
            entity = b"\x00" if entity_id is None else entity_field(entity_id)
            value = records.task(event_id, tid, micros_varint(now), valid, idempotency_key,
                                 orchestration, webhook_url, entity)
        except UnicodeEncodeError:
            # Text pydantic accepts but UTF-8 cannot carry (a lone surrogate such as "\udfff"):
            # found only when writing, where it costs nothing on the usual path.
            raise TaskValidationError(task_type.value, _unencodable(
                {"params": valid.model_dump(), "idempotency_key": idempotency_key,
                 "orchestration": orchestration and orchestration.model_dump(),
                 "webhook_url": webhook_url, "origin": origin.__dict__, "entity_id": entity_id})) from None
        headers = records.task_headers(event_id, new_traceparent_bytes(trace))
        gid = orchestration.generation_id.encode() if orchestration is not None else b""
        acknowledged = (task_id, tid, trace, records.status_pieces, gid, entity)
        stats = self.stats

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                stats.failed += 1
                stats.failures.append((task_id, err.str()))
                if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:  # the broker's (topic's) limit
                    stats.too_large.append(task_id)
                self._sent.pop(dedupe_key, None)
                if on_result is not None:
                    on_result(err)
                return
            stats.acknowledged += 1
            self._acknowledged.append(acknowledged)
            if on_result is not None:
                on_result(None)

        topic = self._task_topics[task_type]
        try:
            self._producer.produce(topic, value, task_id, _BY_KEY, delivered, None, _NOW, headers)
        except BufferError:  # librdkafka's queue is full: serve reports until there is room
            produce_record(self._producer, topic, value, task_id, headers, delivered)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:  # over message.max.bytes
                raise
            raise TaskTooLargeError(f"the {task_type.value} task's record", len(value),
                                    self._max_message_bytes) from None
        # Counted and remembered once produced: a submit that raised can be repeated.
        stats.submitted += 1
        sent[dedupe_key] = None
        if len(sent) > self._dedupe_capacity:
            sent.popitem(last=False)
        self._since_poll += 1
        if self._since_poll >= self._poll_every or _monotonic() - self._polled_at >= self._poll_interval_s:
            self.poll(0)
        return task_id

    def flush(self, timeout_s: float = 30.0, *, statuses: bool = True) -> None:
        """Wait for every outstanding record; raise DeliveryError if any task was not delivered.

        ``statuses=False`` returns once the tasks are acknowledged and their PENDING/QUEUED are
        produced, without waiting for the broker to acknowledge those too (a later flush or poll
        serves them): for a caller that answers once the task itself is safe, like the API."""
        deadline = time.monotonic() + timeout_s
        remaining = self._producer.flush(timeout_s)
        if not statuses and self._acknowledged:
            self._produce_statuses()
        while self._acknowledged and time.monotonic() < deadline:
            self._produce_statuses()
            remaining = self._producer.flush(max(0.0, deadline - time.monotonic()))
        failures, self.stats.failures = self.stats.failures, []
        too_large, self.stats.too_large = self.stats.too_large, []
        if remaining:
            failures.append(("(queue)", f"{remaining} record(s) still undelivered after {timeout_s}s"))
        if failures:
            raise DeliveryError(failures, too_large)

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery reports (also done by submit); returns how many were served."""
        served = self._producer.poll(timeout_s)
        self._since_poll = 0
        self._polled_at = _monotonic()
        if self._acknowledged:
            self._produce_statuses()
        return served

    def close(self, timeout_s: float = 30.0) -> None:
        self.flush(timeout_s)

    def __enter__(self) -> TaskProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _records_for(self, params: Any, attempt: int, origin: Origin, with_generation_id: bool) -> SubmitRecords:
        """The record templates of a submit (made on first use, then cached)."""
        key = (type(params), attempt, origin, with_generation_id)
        records = self._records.get(key)
        if records is None:
            if len(self._records) >= _RECORDS_CAPACITY:
                self._records.clear()
            records = self._records[key] = SubmitRecords(
                self._codec, params, attempt=attempt, source=self._source,
                origin_instance=origin.instance, origin_zone=origin.zone,
                origin_tenant_id=origin.tenant_id, with_generation_id=with_generation_id,
                origin_version=origin.version,
            )
            if attempt == 1 and origin is self._origin and not with_generation_id:
                self._plain_records[type(params)] = records
        return records

    def _produce_statuses(self) -> None:
        """PENDING then QUEUED of each acknowledged task, in the task's trace. They occur now, at
        the acks this poll served: one clock reading (and its encoding) for the whole batch."""
        acknowledged, self._acknowledged = self._acknowledged, []
        now = _time_ns() // 1000
        micros = micros_varint(now)
        producer, topic, headers_of = self._producer, self._status_topic, self._status_headers
        for task_id, tid, trace, statuses, gid, entity in acknowledged:
            for p0, p1, p2, p3, p4, p5 in statuses:  # submit_records.STATUSES: PENDING, QUEUED
                event_id = new_uuid4().encode()
                # The status record from its template: the pieces' layout is SubmitRecords's.
                value = b"".join((p0, event_id, p1, tid, p2, micros, p3, entity, p4, gid, p5))
                headers = headers_of(event_id, new_traceparent_bytes(trace))
                try:
                    producer.produce(topic, value, task_id, _BY_KEY, None, None, _NOW, headers)
                except BufferError:
                    produce_record(producer, topic, value, task_id, headers)
