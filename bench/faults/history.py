"""One history of a fault-suite run: submits with their acknowledgement, every status event read
from the status topic, the faults' start and end, and samples of the read model.

The recorders append from their own threads; a scenario's checker reads a copy. Times are wall
clock (``time.time()``) so a status event's ``occurred_at`` (written by the worker on this machine)
compares with the harness's own times.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from schemas.enums import TaskStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submit:
    task_id: str | None  # None when the submit was not acknowledged
    sent_at: float
    acked_at: float | None
    http_status: int | None
    error: str | None = None

    @property
    def acked(self) -> bool:
        return self.task_id is not None and self.acked_at is not None


@dataclass(frozen=True)
class StatusEvent:
    task_id: str
    attempt: int
    status: TaskStatus
    occurred_at: float
    retryable: bool | None  # a FAILED's error.retryable: another attempt follows
    event_id: str
    partition: int = 0
    offset: int = 0
    read_at: float = 0.0

    @property
    def final(self) -> bool:
        """A terminal status: it ends the task (FAILED too: a retry is QUEUED, issue 17)."""
        return self.status.is_terminal


@dataclass(frozen=True)
class Fault:
    name: str
    started_at: float
    ended_at: float
    kind: str = "service"  # "broker" faults have the longer resume target


@dataclass
class History:
    submits: list[Submit] = field(default_factory=list)
    events: list[StatusEvent] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    # (time, terminal rows in the read model): the projector's progress
    read_model: list[tuple[float, int]] = field(default_factory=list)
    # task id -> times its read-model row went back (an older attempt, or a lower status rank
    # within its attempt) between two samples: what a client polling the API would see
    read_model_regressions: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_submit(self, submit: Submit) -> None:
        with self._lock:
            self.submits.append(submit)

    def add_event(self, event: StatusEvent) -> None:
        with self._lock:
            self.events.append(event)

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def add_sample(self, at: float, terminal_rows: int) -> None:
        with self._lock:
            self.read_model.append((at, terminal_rows))

    def add_regression(self, task_id: str) -> None:
        with self._lock:
            self.read_model_regressions[task_id] = self.read_model_regressions.get(task_id, 0) + 1

    def events_of(self, task_ids: set[str]) -> list[StatusEvent]:
        with self._lock:
            return [e for e in self.events if e.task_id in task_ids]

    def final_tasks(self, task_ids: set[str]) -> set[str]:
        """The tasks of ``task_ids`` whose latest attempt has a final status."""
        latest: dict[str, int] = {}
        ended: set[tuple[str, int]] = set()
        for e in self.events_of(task_ids):
            latest[e.task_id] = max(latest.get(e.task_id, 0), e.attempt)
            if e.final:
                ended.add((e.task_id, e.attempt))
        return {t for t, a in latest.items() if (t, a) in ended}


class StatusRecorder:
    """Reads every partition of the status topic from the beginning, in a thread, into the history.

    Assigned, not subscribed: no consumer group to rebalance while brokers and members come and
    go. librdkafka reconnects by itself after a broker fault."""

    def __init__(self, kafka, history: History) -> None:  # kafka: schemas.KafkaSettings
        self.kafka, self.history = kafka, history
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-recorder", daemon=True)

    def start(self) -> StatusRecorder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from schemas.codec import EventCodec
        from schemas.events import StatusChanged

        codec = EventCodec()
        topic = self.kafka.topics.status
        consumer = Consumer({**self.kafka.client_config(), "group.id": f"faults-{uuid.uuid4().hex}",
                             "enable.auto.commit": False,
                             "log_level": 0})  # a broker fault is the point: no reconnect noise
        try:
            meta = consumer.list_topics(topic, timeout=30).topics[topic]
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
            while not self._stop.is_set():
                for msg in consumer.consume(500, 0.2):
                    if msg.error():
                        continue
                    try:
                        ev = codec.decode(msg.value() or b"")
                    except Exception:  # another writer's record: not ours to judge
                        continue
                    if not isinstance(ev, StatusChanged):
                        continue
                    self.history.add_event(StatusEvent(
                        task_id=ev.envelope.task_id, attempt=ev.envelope.attempt, status=ev.status,
                        occurred_at=ev.envelope.occurred_at.timestamp(),
                        retryable=ev.error.retryable if ev.error is not None else None,
                        event_id=ev.envelope.event_id, partition=msg.partition(),
                        offset=msg.offset(), read_at=time.time()))
        except Exception:
            log.exception("the status recorder stopped")
            raise
        finally:
            consumer.close()


class ReadModelSampler:
    """Counts the terminal rows of the read model (PostgreSQL) twice a second: the projector's
    progress. A database that does not answer (a PostgreSQL restart) is a missed sample."""

    def __init__(self, database_url: str, history: History, interval_s: float = 0.5) -> None:
        self.url, self.history, self.interval_s = database_url, history, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="read-model-sampler", daemon=True)

    def start(self) -> ReadModelSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        import psycopg

        last: dict[str, tuple[int, int]] = {}
        while not self._stop.wait(self.interval_s):
            try:
                with psycopg.connect(self.url, connect_timeout=2) as conn:
                    rows = conn.execute("SELECT task_id, attempt, status FROM tasks").fetchall()
            except psycopg.Error:
                continue
            terminal = 0
            for task_id, attempt, status in rows:
                task_id, rank = str(task_id), _RANK.get(status, 0)
                terminal += rank == _TERMINAL_RANK
                before = last.get(task_id)
                if before is not None and (attempt, rank) < before:
                    self.history.add_regression(task_id)
                last[task_id] = (attempt, rank)
            self.history.add_sample(time.time(), terminal)


_RANK = {"PENDING": 0, "QUEUED": 1, "PROCESSING": 2, "COMPLETED": 3, "FAILED": 3, "CANCELLED": 3}
_TERMINAL_RANK = 3
