"""The projector: the status and task topics, folded into the PostgreSQL read model.

A consumer group of its own (``<prefix>-projector``) reads the status topic and the ten task
topics, decodes each record with :class:`~schemas.codec.EventCodec`, and hands each batch to
:func:`projection.db.projection.apply_batch` (the fold of ``state/lifecycle.py`` against the stored
row, guarded upserts, idempotent history). Offsets are committed only after the database
transaction committed: at-least-once, and replays are harmless because the fold is. They are
*stored* after each batch and committed by librdkafka once a second (and on a rebalance and at
close), not per batch: a commit per batch was three broker writes per task (the most frequent
request the broker served in bench/bench_api_latency.py); after a crash, at most that second of
records is read again and absorbed by the version guards.

A status record that cannot be decoded (or that the fold rejects) is copied to
``<status topic>.dlq`` with error headers and skipped; an undecodable task record is skipped and
counted only, because the worker group of its type dead-letters it already. No record stops the
projector.

It also reads the compacted generations-state topic (the processors' GenerationRecord of each
generation) and hands those documents to
:func:`projection.db.generation_projection.project_generation_records` (version-guarded replace of the
generation's rows, reporting the generations' status changes); an unreadable one is skipped and
counted. The compacted workflows-state topic (the engine's WorkflowState of each workflow, Avro)
goes the same way through :func:`projection.db.workflow_projection.project_workflow_records`.

One batch is one transaction: its generation rows, its task rows and what the ``in_transaction``
hook writes (the webhook outbox rows of both kinds of status change) commit together, or none of
them does and the batch is read again. The transaction's statements travel in one pipeline
(projection/db/pipelined.py), and for tasks whose rows the projector remembers writing there is no
read before the writes (projection/db/task_row_cache.py): one round trip to PostgreSQL per batch.

Sorting a poll's records into a batch (decoding, the unreadable ones set aside, the offsets to
store) is projection/batch.py's. :func:`projection.rebuild.rebuild` replays the same topics from
the beginning into an empty database through the same code (:func:`~projection.batch.collect_batch`,
then the same projection functions), which is why it writes the same rows as the live projection.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from confluent_kafka import (
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from projection.batch import Batch, Event, ProjectorStats, collect_batch, projector_topics
from projection.db.generation_projection import ProjectedBatch, project_generation_records
from projection.db.migrate import migrate
from projection.db.pipelined import pipelined_transaction
from projection.db.projection import apply_events
from projection.db.task_row_cache import TaskRowCache
from projection.db.workflow_projection import project_workflow_records
from projection.webhook_delivery import WebhookDispatcher
from projection.webhooks import WebhookSettings
from schemas.codec import EventCodec
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics
from state.consumer_watchdog import ConsumerStalled, WatchdogSettings
from state.healing_consumer import HealingConsumer

log = logging.getLogger("projection.projector")

# Up to 500 records per transaction: large enough to amortise the commit, small enough that a
# batch is written in a few milliseconds and offsets move often.
BATCH_SIZE = 500
# How often the stored offsets are committed (librdkafka's auto-commit of stored offsets).
COMMIT_INTERVAL_MS = 1000
# How long one poll waits for the first record of a batch; also how late a stop is noticed.
POLL_TIMEOUT_S = 0.05
# Back-off while PostgreSQL is unreachable, doubling up to the cap.
DB_RETRY_BASE_S, DB_RETRY_MAX_S = 0.2, 5.0
_ERROR_MESSAGE_MAX = 2000
METADATA_TIMEOUT_S = 10.0

class ProjectorSettings(BaseSettings):
    """``PROJECTOR_*``."""

    model_config = SettingsConfigDict(env_prefix="PROJECTOR_", frozen=True, extra="ignore")

    # Static membership (group.instance.id, e.g. the service's name): a restarted projector
    # takes its partitions back at once instead of after the old member's session timed out.
    group_instance_id: str | None = None
    # librdkafka's default (45 s); a shorter one moves a dead member's partitions sooner.
    session_timeout_ms: int = Field(default=45_000, ge=1_000)


class Projector:
    """One member of the projector group. ``run()`` until ``stop`` is set; ``poll_once()`` for a
    single batch. Not thread-safe: one thread drives it."""

    def __init__(
        self,
        database_url: str,
        kafka: KafkaSettings,
        *,
        codec: EventCodec | None = None,
        batch_size: int = BATCH_SIZE,
        poll_timeout_s: float = POLL_TIMEOUT_S,
        on_batch: Callable[[ProjectedBatch], None] | None = None,
        in_transaction: Callable[[psycopg.Connection, ProjectedBatch], object] | None = None,
        create_topics: bool = True,
        settings: ProjectorSettings | None = None,
        watchdog: WatchdogSettings | None = None,
        on_stuck: Callable[[str], None] | None = None,
    ) -> None:
        # ``in_transaction(conn, result)`` runs inside the batch's transaction, after its
        # writes (generations, then tasks): what it writes (the webhook outbox) commits with the
        # batch or not at all. ``result`` is a ProjectedBatch: the tasks' transitions and the
        # generations' status changes. ``on_batch(result)`` runs after the offsets are committed.
        # ``watchdog``: judge the consumer's progress and heal it (state/healing_consumer.py);
        # None: no watchdog. ``on_stuck(reason)``: the watchdog found this projector's thread
        # stuck inside the Kafka client (HealingConsumer); called from the watchdog thread.
        self._in_transaction = in_transaction
        self.database_url = database_url
        self.kafka = kafka
        self.stats = ProjectorStats()
        self._codec = codec or EventCodec()
        self._batch_size = batch_size
        self._poll_timeout_s = poll_timeout_s
        self._on_batch = on_batch
        self._status_topic = kafka.topics.status
        if create_topics:
            ensure_topics(kafka)
        self.group_id = f"{kafka.topic_prefix}-projector"
        settings = settings or ProjectorSettings()
        instance = settings.group_instance_id
        self._consumer = HealingConsumer({
            **kafka.client_config(),
            "group.id": self.group_id,
            **({"group.instance.id": instance} if instance else {}),
            "session.timeout.ms": settings.session_timeout_ms,
            # Offsets are stored by poll_once once their batch is in the database; librdkafka
            # commits what is stored every COMMIT_INTERVAL_MS, on a rebalance and at close.
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "auto.commit.interval.ms": COMMIT_INTERVAL_MS,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
        }, projector_topics(kafka), name=instance or self.group_id, kafka=kafka,
            settings=watchdog, on_stuck=on_stuck)
        self._producer: Producer | None = Producer(
            {**kafka.producer_config(), "enable.idempotence": True, "linger.ms": 0})
        self._conn: psycopg.Connection | None = None
        # The rows this projector wrote, so that a batch of their next events need not read
        # them first (projection/db/task_row_cache.py).
        self._rows = TaskRowCache()

    # -- running -----------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> ProjectorStats:
        stop = stop or threading.Event()
        self._consumer.start_watchdog()
        gave_up = False
        try:
            while not stop.is_set():
                self.poll_once(stop)
        except ConsumerStalled:
            gave_up = True
            raise
        finally:
            self.close(gave_up=gave_up)
        return self.stats

    @property
    def consumer(self) -> HealingConsumer:
        return self._consumer

    def poll_once(self, stop: threading.Event | None = None) -> int:
        """Consume, write and commit one batch; return how many records it had."""
        # Wait for one record, then take what is already fetched: consume(n, timeout) alone would
        # wait out the whole timeout on a quiet topic (50 ms added to every status change seen
        # through the API; bench/bench_api_latency.py).
        self._consumer.heal()  # what the watchdog asked for, if anything
        first = self._consumer.poll(self._poll_timeout_s)
        if first is None:
            return 0
        messages = [first]
        if self._batch_size > 1:
            messages += self._consumer.consume(self._batch_size - 1, 0)
        batch = collect_batch(self._codec, messages, self._status_topic, self.stats,
                              self.kafka.topics.generations_state, self.kafka.topics.workflows_state)
        result = self._write_batch(batch, stop)
        self._dead_letter(batch.bad)
        if result is None:  # stopped while the database was down: offsets stay uncommitted
            return len(messages)
        if batch.offsets:
            try:
                self._consumer.store_offsets(
                    [TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()])
            except KafkaException as exc:  # revoked meanwhile: its new owner replays the batch
                log.warning("could not store the batch's offsets: %s", exc)
        self.stats.batches += 1
        self.stats.tasks_written += result.tasks_written
        self.stats.events_inserted += result.events_inserted
        self.stats.generations_written += result.generations_written
        self.stats.workflows_written += result.workflows_written
        if self._on_batch is not None:
            self._on_batch(result)
        return len(messages)

    def close(self, *, gave_up: bool = False) -> None:
        self._consumer.close(gave_up=gave_up)
        if self._producer is not None:
            self._producer.flush(METADATA_TIMEOUT_S)
            self._producer = None  # destroyed now, not at garbage collection
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- internals ---------------------------------------------------------------------------

    def _write_batch(self, batch: Batch, stop: threading.Event | None) -> ProjectedBatch | None:
        """:meth:`_write` of the batch. A record PostgreSQL refuses to store (SQLSTATE class 22,
        e.g. text it cannot represent) must not stop the projection: each record is then tried
        alone in a transaction that is rolled back, the refused ones are moved to ``batch.bad``
        (dead-lettered like undecodable ones) and the rest is written."""
        try:
            return self._write(batch.events, stop, batch.generations, batch.workflows)
        except psycopg.DataError as exc:
            log.warning("PostgreSQL refused a batch of %d records (%s); finding the refused ones",
                        len(batch.events) + len(batch.generations) + len(batch.workflows), exc)
        refused = [(m, err) for m, e in zip(batch.event_messages, batch.events)
                   if (err := self._refusal([e], [])) is not None]
        refused += [(m, err) for m, g in zip(batch.generation_messages, batch.generations)
                    if (err := self._refusal([], [g])) is not None]
        refused += [(m, err) for m, w in zip(batch.workflow_messages, batch.workflows)
                    if (err := self._refusal([], [], workflows=[w])) is not None]
        batch.drop([m for m, _ in refused])
        batch.bad.extend(refused)
        return self._write(batch.events, stop, batch.generations, batch.workflows)

    def _refusal(self, events: list[Event], generations: list[Any], *, workflows: list[Any] = ()
                 ) -> psycopg.DataError | None:
        """The DataError projecting these alone raises, if any (nothing is kept either way)."""
        assert self._conn is not None
        try:
            with self._conn.transaction(force_rollback=True):
                self._project(events, generations, workflows=workflows)
        except psycopg.DataError as exc:
            return exc
        return None

    def _project(self, events: list[Event], generations: list[Any],
                 cache: TaskRowCache | None = None, *, workflows: list[Any] = ()) -> ProjectedBatch:
        """Everything a batch writes, in the caller's transaction. Generation locks, then
        workflow locks, are taken before task locks in every batch of every projector: no
        deadlock."""
        assert self._conn is not None
        generation_result = project_generation_records(self._conn, generations)
        workflow_result = project_workflow_records(self._conn, workflows)
        result = ProjectedBatch.of(apply_events(self._conn, events, cache), generation_result,
                                   workflow_result)
        if self._in_transaction is not None:
            self._in_transaction(self._conn, result)
        return result

    def _write(self, events: list[Event], stop: threading.Event | None,
               generations: list[Any] = (), workflows: list[Any] = ()) -> ProjectedBatch | None:
        if not events and not generations and not workflows:
            return ProjectedBatch()
        delay = DB_RETRY_BASE_S
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.database_url, autocommit=True)
                # One transaction, its statements pipelined: two round trips to PostgreSQL
                # (the projection's read, then the rest with the commit), one when every
                # task's row is remembered.
                with pipelined_transaction(self._conn):
                    result = self._project(events, generations, self._rows, workflows=workflows)
                if result.pending_rows is not None:
                    self._rows.store(result.pending_rows.entries())
                self._consumer.signals.waiting_on = None
                return result
            except psycopg.errors.SerializationFailure as exc:
                # A remembered row changed under us (projection_claim): nothing was written.
                self.stats.stale_rows += 1
                log.info("remembered task rows were stale (%s); writing the batch again", exc)
                self._rows.clear()
            except psycopg.OperationalError as exc:
                self.stats.db_retries += 1
                self._consumer.signals.waiting_on = "PostgreSQL"  # not the consumer's fault
                log.warning("PostgreSQL unavailable (%s); retrying the batch in %.1fs", exc, delay)
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                if stop is not None and stop.wait(delay):
                    return None
                if stop is None:
                    time.sleep(delay)
                delay = min(delay * 2, DB_RETRY_MAX_S)

    def _dead_letter(self, bad: list[tuple[Message, Exception]]) -> None:
        failures: list[str] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(err.str())

        for msg, error in bad:
            if msg.topic() != self._status_topic:
                # A task record: the worker group of its type dead-letters it. A generation
                # record (a tombstone, a format this projector does not know): no DLQ, only
                # our processors write that compacted topic.
                self.stats.skipped += 1
                log.warning("skipping unreadable record %s[%d]@%d: %s",
                            msg.topic(), msg.partition(), msg.offset(), error)
                continue
            headers = [*(msg.headers() or []),
                       ("error.class", type(error).__name__.encode()),
                       ("error.message", str(error)[:_ERROR_MESSAGE_MAX].encode()),
                       ("original.topic", msg.topic().encode()),
                       ("original.partition", str(msg.partition()).encode()),
                       ("original.offset", str(msg.offset()).encode()),
                       ("dead-lettered-by", b"projector")]
            assert self._producer is not None, "the projector is closed"
            self._producer.produce(self.kafka.topics.dlq(msg.topic()), key=msg.key(),
                                   value=msg.value(), headers=headers, on_delivery=delivered)
            self.stats.dead_lettered += 1
            log.warning("dead-lettered status record %s[%d]@%d: %s",
                        msg.topic(), msg.partition(), msg.offset(), error)
        if bad and self._producer is not None:
            self._producer.flush(METADATA_TIMEOUT_S)
            if failures:  # do not commit past a record that is neither projected nor kept
                raise RuntimeError(f"dead-letter produce failed: {'; '.join(failures)}")


STUCK_EXIT_CODE = 70  # EX_SOFTWARE


def exit_stuck(reason: str) -> None:
    """End the process at once, non-zero (from the watchdog thread; the main thread is stuck in
    a call that neither an exception nor a signal handler can interrupt)."""
    log.critical("exiting: %s", reason)
    logging.shutdown()
    os._exit(STUCK_EXIT_CODE)


def run_projector(database_url: str, kafka: KafkaSettings, stop: threading.Event | None = None,
                  *, webhooks: WebhookSettings | None = None, **kwargs: Any) -> ProjectorStats:
    """Migrate, then project until ``stop`` is set (``computectl projector``); with
    ``webhooks``, also queue each status change in the webhook outbox (in the batch's
    transaction) and deliver the outbox's due rows. The consumer is watched (``watchdog``,
    default ``WatchdogSettings()`` from the environment); raises ConsumerStalled when it made no
    progress even after it was recreated: the process should exit non-zero."""
    migrate(database_url)
    dispatcher = None if webhooks is None else WebhookDispatcher(database_url, webhooks)
    kwargs.setdefault("watchdog", WatchdogSettings())
    if threading.current_thread() is threading.main_thread():
        # The process is this projector's (``computectl projector``; the API's embedded one runs
        # in a thread and fails /healthz instead): a thread stuck in librdkafka cannot be
        # interrupted, so the process ends and its supervisor starts a fresh one.
        kwargs.setdefault("on_stuck", exit_stuck)
    try:
        return Projector(database_url, kafka,
                         on_batch=None if dispatcher is None else dispatcher.on_batch,
                         in_transaction=None if dispatcher is None else dispatcher.enqueue,
                         **kwargs).run(stop)
    finally:
        if dispatcher is not None:
            dispatcher.stop()
