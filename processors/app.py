"""The Faust app: the lifecycle fold, its state topic, leases, the generations orchestrator and
the workflow engine (docs/PROCESSORS.md).

    status topic ──fold_status──> tasks table ══ its changelog: <prefix>.tasks.state (compacted)
         │                            ├─> lease book ──lease timer──> time-out, retry rec.
         └─ unreadable ──> <status>.dlq│                   ▲   (status topic, task topic)
    task topics ──keep_submissions──> submissions table ───┘
                                       └─> final states of generation tasks, keyed by generation
                                           id ──> <prefix>.generations ──orchestrate──> (see
                                           processors/orchestrator.py)
                                       └─> final states of workflow steps' tasks (their
                                           generation_id is a workflow id) ──> <prefix>.workflows
                                           ──run_workflows──> (see processors/workflows.py)

:func:`create_app` builds one app per call (no module-level app). The agents only move records
between Kafka and the pure functions of ``processors/folding.py`` and ``processors/leases.py``.
At least once: offsets are committed after the outputs of the records they cover were flushed,
and every output is idempotent (same key and version, or a deterministic event id).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from typing import Any

import faust

from processors.evaluators.base import EvaluatorRegistry, EvaluatorSettings, default_registry
from processors.folding import STATE_CONTENT_TYPE, decode_state, fold_batch
from processors.lease_timer import LeaseTimer
from processors.leases import LeaseBook
from processors.orchestrator import FetchImage, Orchestrator, Outbox, install
from processors.progress import install as install_progress_watch
from processors.settings import ProcessorSettings
from processors.transport import PerRecordQuietMonitor, ProcessorsApp, RawBytesSchema
from processors.workflows import WorkflowEngine
from processors.workflows import install as install_workflows
from schemas.codec import EventCodec
from schemas.errors import DecodeError
from schemas.events import TaskSubmitted
from schemas.headers import header_dict, json_record_headers
from schemas.kafka_settings import KafkaSettings
from schemas.partitioning import key_partition
from schemas.record_rules import check_task_record
from schemas.workflow_events import is_workflow_id
from state.lifecycle import TaskState

log = logging.getLogger("processors.app")

_ERROR_MESSAGE_MAX = 2000  # bytes of an error message copied into a DLQ header
# Decoded states kept beside the table's JSON: a task in flight is folded every few seconds, so
# the cache needs to hold the tasks in flight, not every task seen. 20k states (~12 MB) cover a
# farm finishing a few thousand tasks a second; 100k (the first value) made the processors grow
# by ~60 MB over any backlog of that size before the first clear (docs/PERFORMANCE.md).
DECODED_CACHE_SIZE = 20_000


def _broker_credentials(kafka: KafkaSettings) -> Any:
    """KafkaSettings' security settings in Faust's vocabulary."""
    protocol = kafka.security_protocol.upper()
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=kafka.ssl_ca_location)
        if kafka.ssl_certificate_location:
            context.load_cert_chain(kafka.ssl_certificate_location, kafka.ssl_key_location)
        if protocol == "SSL":
            return faust.SSLCredentials(context)
    password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    return faust.SASLCredentials(username=kafka.sasl_username, password=password,
                                 mechanism=kafka.sasl_mechanism or "PLAIN", ssl_context=context)


def _faust_settings(kafka: KafkaSettings, settings: ProcessorSettings, app_id: str) -> dict:
    return dict(
        broker=[f"kafka://{host.strip()}" for host in kafka.bootstrap_servers.split(",")],
        broker_credentials=_broker_credentials(kafka),
        store=settings.store,
        datadir=str(settings.datadir / app_id),
        processing_guarantee="at_least_once",  # faust's exactly_once is not reliable
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        web_enabled=False,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        stream_buffer_maxsize=settings.stream_buffer_maxsize,
        broker_max_poll_records=settings.max_poll_records,
        consumer_max_fetch_size=settings.max_partition_fetch_bytes,
        broker_commit_every=settings.commit_every,
        broker_commit_interval=settings.commit_interval_s,
        producer_linger=settings.producer_linger_ms / 1000.0,
        producer_max_batch_size=settings.producer_max_batch_size,
        producer_compression_type=settings.producer_compression,
        table_standby_replicas=settings.table_standby_replicas,
        consumer_group_instance_id=settings.group_instance_id,
        broker_session_timeout=settings.session_timeout_s,
        # Faust's repaired Cython fast paths (a documented, opt-in setting of faust-streaming
        # 0.15): the stream takes a record already in its queue without awaiting the channel.
        # Its other effect (one decoded event shared by channels of the same types) cannot
        # change what we see: every topic here is raw bytes, which never fail to decode.
        cython_optimizations=True,
        # Faust's per-record statistics feed only its web views, which are off.
        Monitor=PerRecordQuietMonitor,
    )


def _delete(table: Any, partition: int, key: str) -> None:
    """``del table[key]`` with the changelog partition given explicitly: Faust takes it from the
    stream's current event, which a batch of events (``take_events``) does not set. The source
    record's partition is the right one: the changelog is co-partitioned with the source."""
    if table.data.pop(key, None) is not None:
        table.send_changelog(partition, key, None, value_serializer="raw")


def _dead_letter_headers(message: Any, error: Exception) -> list[tuple[str, bytes]]:
    return [*(message.headers or []),
            ("error.class", type(error).__name__.encode()),
            ("error.message", str(error).encode()[:_ERROR_MESSAGE_MAX]),
            ("original.topic", message.topic.encode()),
            ("original.partition", str(message.partition).encode()),
            ("original.offset", str(message.offset).encode())]


def _state_headers(state: TaskState) -> list[tuple[str, bytes]]:
    return json_record_headers(event_id=f"{state.task_id}/{state.version}", source="processors",
                               ce_type="compute.state.TaskState", subject=state.task_id,
                               content_type=STATE_CONTENT_TYPE)


def evaluator_registry(settings: ProcessorSettings,
                       registry: EvaluatorRegistry | None = None) -> EvaluatorRegistry:
    """``registry`` (else :func:`default_registry`), plus ``scripted`` when a script is set."""
    registry = registry or default_registry()
    script = settings.evaluator_script
    if script is not None and "scripted" not in registry.names():
        from processors.evaluators.scripted import PromptScriptedEvaluator

        scripted = PromptScriptedEvaluator(script)
        registry.register("scripted", lambda _settings: scripted)
    return registry


def _default_fetch_image() -> FetchImage:
    """Images as the workers fetch inputs (``INPUT_*``: limits, private networks, file roots;
    the ``RESULTS_URL`` folder and ``s3://`` with ``S3_ENDPOINT_URL``)."""
    from gpu_consumers.inputs import InputFetcher, InputSettings
    from gpu_consumers.storage import StorageSettings, file_url_path

    settings = InputSettings()
    results_url = StorageSettings().results_url
    if results_url.startswith("file:"):  # the workers' results, also when INPUT_ALLOWED_FILE_ROOTS
        root = file_url_path(results_url)  # names only the folders of task inputs
        if root not in settings.allowed_file_roots:
            settings = settings.model_copy(
                update={"allowed_file_roots": [*settings.allowed_file_roots, root]})
    fetcher = InputFetcher(settings)
    return lambda url: fetcher.fetch_image(url, mode=None)


def create_app(
    kafka: KafkaSettings, settings: ProcessorSettings, *, codec: EventCodec | None = None,
    evaluators: EvaluatorRegistry | None = None,
    evaluator_settings: EvaluatorSettings | None = None,
    fetch_image: FetchImage | None = None,
) -> ProcessorsApp:
    """The processors' Faust app for these settings; run it with a ``faust.Worker``.

    ``evaluators``: the AGENTIC loop's evaluator plugins (default: :func:`default_registry`,
    plus ``scripted`` when ``settings.evaluator_script`` is set); ``evaluator_settings`` default
    to :meth:`EvaluatorSettings.from_env`; ``fetch_image(url)`` reads an attempt's image
    (default: ``gpu_consumers.inputs.InputFetcher`` with ``InputSettings()``)."""
    codec = codec or EventCodec()
    topics = kafka.topics
    app_id = settings.app_id_for(kafka.topic_prefix)
    settings.datadir.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    app = ProcessorsApp(app_id, fetch_min_bytes=settings.fetch_min_bytes,
                        fetch_max_wait_ms=settings.fetch_max_wait_ms,
                        **_faust_settings(kafka, settings, app_id))
    policy = settings.retry_policy

    status_topic = app.topic(topics.status, partitions=kafka.partitions, schema=RawBytesSchema())
    # str keys: the table's keys, also when recovery reads them back from this topic.
    state_topic = app.topic(topics.state, partitions=kafka.partitions, key_type=str,
                            value_type=bytes, compacting=True, acks=False)
    dlq_topic = app.topic(topics.dlq(topics.status), partitions=kafka.partitions)
    task_topics = app.topic(*topics.task_topics(), partitions=kafka.partitions)

    book = LeaseBook(settings.lease_for, policy)

    async def on_changelog_event(event: Any) -> None:  # recovery: rebuild the lease book
        state = decode_state(event.value)
        if state is not None:
            book.observe(event.message.partition, state)

    # The state topic is the tasks table's changelog: one record per change serves both, and
    # a restart recovers the table from the topic the projection reads.
    tasks = app.Table("tasks", partitions=kafka.partitions, key_type=str, value_type=bytes,
                      changelog_topic=state_topic, on_changelog_event=on_changelog_event,
                      help="task id -> the folded state's JSON document")
    submissions = app.Table("submissions", partitions=kafka.partitions, key_type=str,
                            value_type=bytes,
                            help="task id -> its latest task record, to retry after a lease")

    decoded: dict[str, tuple[bytes, TaskState]] = {}  # skips JSON for a task seen recently

    def load(task_id: str) -> TaskState | None:
        document = tasks.data.get(task_id)
        if document is None:
            return None
        hit = decoded.get(task_id)
        if hit is not None and hit[0] == document:  # the same bytes as in the table: still valid
            return hit[1]
        return decode_state(document)

    def remember(task_id: str, document: bytes, state: TaskState) -> None:
        if len(decoded) >= DECODED_CACHE_SIZE:
            decoded.clear()  # cheaper than an LRU; refills from the table in one batch
        decoded[task_id] = (document, state)

    def is_final(state: TaskState) -> bool:
        # Every terminal is final: a retry is QUEUED for the next attempt, never FAILED (the
        # retry policy and the poison rule are applied by whoever emits it; state/lifecycle.py).
        return state.is_terminal

    def on_state_delivered(delivery: Any) -> None:
        if not delivery.cancelled() and delivery.exception() is not None:
            # Stop before a commit covers a state the broker never got; the next start folds
            # those records again.
            log.error("state record not delivered, stopping: %s", delivery.exception())
            app.loop.create_task(app.crash(delivery.exception()))

    @app.agent(status_topic, name="fold_status")
    async def fold_status(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            outcome = fold_batch(
                codec, [(e.message.key, e.message.value, e.message.partition) for e in events], load)
            for index, error in outcome.dead:
                message = events[index].message
                log.warning("status record %s[%d]@%d dead-lettered: %s", message.topic,
                            message.partition, message.offset, error)
                await dlq_topic.send(key=message.key, value=message.value,
                                     headers=_dead_letter_headers(message, error))
            for changed in outcome.changed:
                tasks.data[changed.task_id] = changed.document  # the table: local store...
                remember(changed.task_id, changed.document, changed.state)
                headers = _state_headers(changed.state)
                delivery = await app.producer.send(  # ...and its changelog, the state topic
                    topics.state, changed.task_id.encode(), changed.document, changed.partition,
                    None, headers)
                delivery.add_done_callback(on_state_delivered)
                book.observe(changed.partition, changed.state)
                if not is_final(changed.state):
                    continue
                if changed.task_id in submissions.data:
                    _delete(submissions, changed.partition, changed.task_id)
                generation_id = changed.state.generation_id
                if generation_id is not None:  # repartition: task id -> generation/workflow id
                    key = generation_id.encode()
                    delivery = await app.producer.send(
                        topics.workflows if is_workflow_id(generation_id) else topics.generations,
                        key, changed.document,
                        key_partition(key, kafka.partitions), None, headers)
                    delivery.add_done_callback(on_state_delivered)

    def refused(message: Any) -> Exception | None:
        """Why a task record is not kept for a retry: unreadable, or its key or CloudEvents
        headers disagree with its envelope (schemas/record_rules.py; the same judgement as the
        workers', which dead-letter it and fail its task)."""
        try:
            task = codec.decode(message.value)
        except DecodeError as exc:
            return exc
        if not isinstance(task, TaskSubmitted):
            return DecodeError(f"a {task.avro_name} record on a task topic")
        raw = message.headers or ()
        headers = header_dict(raw.items() if isinstance(raw, Mapping) else raw)
        return check_task_record(message.key, headers, task_id=task.envelope.task_id,
                                 event_id=task.envelope.event_id, avro_name=task.avro_name)

    @app.agent(task_topics, name="keep_submissions")
    async def keep_submissions(stream: Any) -> None:
        async for event in stream.events():
            key = event.message.key
            task_id = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
            state = load(task_id) if task_id else None
            if (task_id and event.message.value and not (state and is_final(state))
                    and refused(event.message) is None):  # the workers dead-letter the others
                submissions[task_id] = event.message.value

    timer = LeaseTimer(app, kafka, settings, book, codec=codec, status_topic=topics.status,
                       submission=submissions.data.get)
    app.timer(settings.lease_check_interval_s, name="check_leases")(timer.check)
    app.on_before_shutdown.connect(timer.on_shutdown)

    orchestrator = Orchestrator(
        Outbox(kafka, codec), evaluator_registry(settings, evaluators),
        evaluator_settings or EvaluatorSettings.from_env(), fetch_image or _default_fetch_image())
    install(app, kafka, orchestrator, dead_letter_headers=_dead_letter_headers,
            on_delivered=on_state_delivered)
    install_workflows(app, kafka, WorkflowEngine(Outbox(kafka, codec)), codec,
                      dead_letter_headers=_dead_letter_headers, on_delivered=on_state_delivered)
    # Committed offsets of the fold's sources must move while they have records to commit
    # (processors/progress.py: rejoin, then crash for the supervisor; issue 15 item 2).
    app.progress = install_progress_watch(
        app, kafka, app_id, [topics.status, *topics.task_topics()],
        name=settings.group_instance_id or app_id)
    return app
