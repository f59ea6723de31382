"""The worker: Kafka consumer groups in, one task at a time, statuses out, then the commit.

One confluent-kafka consumer per served task type, in the group ``<group_prefix>.<type slug>``
(so adding processes shares a type's partitions), manual commits only. The loop is short:

1. poll the types' consumers in turn; a record that cannot be decoded is dead-lettered (with a
   FAILED/INVALID_INPUT status when its key is a task id) and committed; a task cancelled while
   queued ends CANCELLED without running;
2. otherwise hand the record to a :class:`~gpu_consumers.execution.TaskRun` in the task thread,
   while this thread keeps calling ``poll``, so the member stays inside ``max.poll.interval.ms``
   however long the task takes. The first record that arrives meanwhile is kept and every
   assigned partition is paused: nothing more is fetched until the task ends. (Pausing up front
   would make every resume wait for a fetch round trip, up to ``fetch.wait.max.ms``, which is
   half a second per task when tasks are short.);
3. when the run reports, commit the record's offset (only after its terminal status was
   acknowledged by the broker), resume, repeat. A commit the broker rejects (a rebalance under
   way) is sent again for as long as this worker owns the partition
   (:class:`~gpu_consumers.offsets.CommitLedger`), and a revocation commits what it takes away.

The first records of a partition this worker is assigned are checked against the status topic
(:mod:`gpu_consumers.takeover`): one whose task already ended for good (its previous owner died
between the terminal status and the commit) is committed without running again.

A partition revoked while its task runs (a worker joined) waits up to ``rebalance_wait_s`` for
the task, so its owner commits it; otherwise the new owner runs it again (at-least-once: the
lifecycle fold keeps one terminal state per attempt).

Stopping (:meth:`Worker.stop`, which ``computectl worker`` calls on SIGTERM/SIGINT; a library
class leaves process signals to its process): no new work; the running task may finish
within ``shutdown_grace_s``, then it is cancelled with reason ``shutdown``: no terminal status and
no commit, so the group runs it again elsewhere. A worker whose handler ignored a time-limit
cancel is *unhealthy*: it reports that task, stops, and ``run`` returns with ``healthy`` False so
that the process exits non-zero and its supervisor starts a fresh one (the stuck thread may be
holding the GPU). That happens only with ``execution="inline"``: by default (supervised) the
handlers run in a child process (:mod:`gpu_consumers.supervisor`) that is killed and replaced,
and the worker stays up and healthy. Burst mode (``run(max_tasks=..., idle_timeout_s=...)``) returns counters.
``run`` may be called once per Worker.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from prometheus_client import start_http_server

from gpu_consumers.control import CancelledIds, CancelReason, ControlListener
from gpu_consumers.emitter import Emitter
from gpu_consumers.execution import Outcome, RunReport, Services, TaskRun
from gpu_consumers.fault_points import fault_point
from gpu_consumers.group_protocol import (
    Protocol,
    choose_protocol,
    client_config_for,
    group_config,
)
from gpu_consumers.handlers.handler_set import HandlerFactory, HandlerSet, Providers
from gpu_consumers.offsets import CommitLedger, Partition, on_commit
from gpu_consumers.providers import ProviderRouter, with_provider_handlers
from gpu_consumers.settings import ContentPolicy, WorkerSettings
from gpu_consumers.storage import OutputStore
from gpu_consumers.supervisor import ChildKit, Supervisor
from gpu_consumers.takeover import Answer, StatusLookup, Step, recheck_delay, step_for
from gpu_consumers.threads import Call, ReusableThread
from schemas.codec import EventCodec
from schemas.enums import TaskType
from schemas.errors import DecodeError
from schemas.events import TaskSubmitted
from schemas.headers import header_dict
from schemas.kafka_settings import KafkaSettings
from schemas.record_rules import check_task_record
from schemas.schema_store import SchemaStoreReader, publish_event_schemas
from state.stops import STOPS_HEADER, stops_from_header

if TYPE_CHECKING:
    from gpu_consumers.inputs import InputFetcher
    from gpu_consumers.model_cache import ModelCache

log = logging.getLogger("gpu_consumers.worker")

_POLL_S = 0.1  # one loop turn; also how fast a stop request or a finished task is noticed
_JOIN_ALLOWANCE_S = 60.0  # burst idle clock starts anyway if a group never assigns within this
# A consumer replaced after a fatal error joins again after this pause; a static member's
# previous process (SIGKILLed) holds its instance id until its session (10 s) expires.
_REJOIN_PAUSE_S = 1.0
_MAX_REJOINS = 60  # replacements with no assignment in between: then exit for the supervisor


def _is_fatal(err: KafkaError) -> bool:
    # librdkafka reports a fatal error to poll() as an event with the code _FATAL, whose
    # fatal() flag is not always set.
    return err.fatal() or err.code() == KafkaError._FATAL
# Idempotent producer: a status or DLQ record is written once even when librdkafka retries it.
# Its linger.ms is WorkerSettings.status_linger_ms: PROCESSING waits for a quick task's terminal
# status, whose flush sends both at once (flush ignores linger.ms).
_PRODUCER_CONFIG = {"enable.idempotence": True, "acks": "all"}


@dataclass
class WorkerStats:
    completed: int = 0
    failed: int = 0
    retried: int = 0  # attempts started after a failed attempt
    cancelled: int = 0
    dead_lettered: int = 0
    aborted: int = 0  # stopped by shutdown, left to the group
    handled: int = 0  # records taken from the task topics
    already_ended: int = 0  # taken over with a final status on the topic: committed, not run
    takeover_waits: int = 0  # takeover checks that could not read the status topic (then waited)
    fallbacks: int = 0  # tasks run on their type's fallback provider (gpu_consumers/providers.py)


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class _Lane:
    """One task type's consumer."""

    task_type: TaskType
    topic: str
    consumer: Consumer
    assigned: bool = False  # the group has assigned this member (possibly nothing)
    owned: set[Partition] = field(default_factory=set)  # kept by the rebalance callbacks
    commits: CommitLedger = field(default_factory=CommitLedger)
    # Assigned partitions whose next record is checked against the status topic (takeover.py).
    taken_over: set[Partition] = field(default_factory=set)
    # A fatal client error (e.g. UNRELEASED_INSTANCE_ID) left this consumer unusable: the main
    # loop replaces it (_replace_lane); ``rejoins`` counts replacements not yet assigned.
    fatal: KafkaError | None = None
    rejoins: int = 0


@dataclass
class _InFlight:
    lane: _Lane
    msg: Message
    run: TaskRun
    call: Call = field(init=False)  # the run, in the worker's task thread
    report: RunReport | None = None
    lost: bool = False  # its partition was revoked before it finished: never commit it
    committed: bool = False


class Worker:
    def __init__(
        self,
        kafka: KafkaSettings,
        settings: WorkerSettings,
        handlers: Mapping[TaskType, HandlerFactory | Providers],
        store: OutputStore,
        fetcher: InputFetcher,
        models: ModelCache,
        *,
        codec: EventCodec | None = None,
        content_policy: ContentPolicy | None = None,
        worker_id: str | None = None,
        child: Callable[[], ChildKit] | None = None,
    ) -> None:
        """``child``: how the handler process builds its handlers, fetcher and models (a
        picklable callable: a module-level function, or ``functools.partial`` of one). Without
        it, supervised execution pickles ``handlers``, ``fetcher`` and ``models`` to the child,
        which needs picklable handler factories (classes, module-level functions)."""
        missing = [t.slug for t in settings.types if t not in handlers]
        if missing:
            raise ValueError(f"no handler for task type(s) {', '.join(missing)}; serve fewer types")
        self.kafka, self.settings = kafka, settings
        self.worker_id = worker_id or new_worker_id()
        self.stats = WorkerStats()
        # Provider routes: each configured provider is a handler entry of its own ("route:<name>")
        # that the child process builds too; the router picks one per task and counts fallbacks.
        self.providers = ProviderRouter(settings.providers)
        handlers = with_provider_handlers(handlers, settings.providers)
        self.handlers = HandlerSet(handlers)
        self._codec = codec or EventCodec(lookup_fingerprint=SchemaStoreReader(kafka))
        self._store, self._fetcher, self._models = store, fetcher, models
        self._child = None
        self.supervisor: Supervisor | None = None  # the handler process's, while ``run`` runs
        if settings.execution == "supervised":
            self._child = child or functools.partial(
                ChildKit, dict(handlers), fetcher, models, settings.resolved_device())
            try:
                pickle.dumps(self._child)
            except Exception as exc:
                raise ValueError(
                    f"supervised execution sends the handlers to a child process, and these "
                    f"cannot be pickled ({exc}); pass child=, or set execution='inline'") from exc
        self._content_policy = content_policy or settings.load_content_policy()
        self._cancelled = CancelledIds(settings.cancelled_capacity)
        # Cancels whose CANCELLED the API wrote itself (the task had not started).
        self._cancel_written = CancelledIds(settings.cancelled_capacity)
        self._cancel_lock = threading.Lock()  # orders a cancel against a task's start
        self._stop = threading.Event()
        self._force = threading.Event()
        self._healthy = True
        self._inflight: _InFlight | None = None
        self._task_thread = ReusableThread("task")  # runs each task, so _wait can give up on one
        self._buffer: deque[tuple[_Lane, Message]] = deque()
        self._paused = False
        self._lanes: list[_Lane] = []
        self._next_lane = 0
        self._lookup: StatusLookup | None = None
        self.protocol: Protocol = "classic"  # the consumer-group protocol run() chose
        self._last_activity = time.monotonic()

    @property
    def healthy(self) -> bool:
        return self._healthy

    def stop(self, *, now: bool = False) -> None:
        """Stop taking work; the running task gets ``shutdown_grace_s`` (none with ``now``).
        Thread-safe and signal-safe: only sets flags."""
        if now:
            self._force.set()
        self._stop.set()

    def cancel_requested(self, task_id: str) -> bool:
        """Whether a cancel for ``task_id`` was read from the control topic (and, if the task
        is running, passed to it)."""
        with self._cancel_lock:
            return task_id in self._cancelled

    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs this worker owns now (for health checks and tests)."""
        return sorted(tp for lane in list(self._lanes) for tp in list(lane.owned))

    # ---- the loop -------------------------------------------------------------------------------

    def run(self, max_tasks: int | None = None,
            idle_timeout_s: float | None = None) -> WorkerStats:
        """Serve until stopped (or, in burst mode, ``max_tasks`` records / ``idle_timeout_s``
        without one); return the counters."""
        publish_event_schemas(self.kafka, self._codec.framing)  # for readers of its statuses
        producer = Producer({**self.kafka.producer_config(), **_PRODUCER_CONFIG,
                             "linger.ms": self.settings.status_linger_ms, "client.id": self.worker_id})
        self._emitter = Emitter(producer, self._codec, self.kafka.topics, self.worker_id,
                                zone=self.settings.origin_zone)
        supervisor = None
        if self._child is not None:
            s = self.settings
            supervisor = Supervisor(self._child, timeout_grace_s=s.timeout_grace_s,
                                    cancel_grace_s=s.cancel_grace_s, max_rss_bytes=s.rss_ceiling(),
                                    start_timeout_s=s.child_start_timeout_s)
            supervisor.start()  # warms up while the consumers join their groups
        self.supervisor = supervisor
        self._services = Services(
            settings=self.settings, emitter=self._emitter, store=self._store,
            fetcher=self._fetcher, models=self._models, device=self.settings.resolved_device(),
            handler_for=self.handlers.for_task, content_policy=self._content_policy,
            supervisor=supervisor, providers=self.providers)
        metrics_server = None
        if self.settings.metrics_port is not None:
            metrics_server, _ = start_http_server(self.settings.metrics_port,
                                                  registry=self.providers.metrics)
        control = ControlListener(self.kafka, self._on_cancel, codec=self._codec,
                                  client_id=f"{self.worker_id}-control")
        if self.settings.takeover_lookback_s > 0:
            self._lookup = StatusLookup(
                self.kafka, self._codec, lookback_s=self.settings.takeover_lookback_s,
                scan_max=self.settings.takeover_scan_max, client_id=f"{self.worker_id}-takeover")
        started = time.monotonic()
        try:
            control.start()
            self.protocol = choose_protocol(
                self.kafka, self.settings.group_protocol,
                [self.settings.group_id(t) for t in self.settings.types],
                self.settings.session_timeout_ms, stop=self._stop.is_set)
            self._lanes = [self._open_lane(t) for t in self.settings.types]
            log.info("worker %s serving %s (%s group protocol)", self.worker_id,
                     ", ".join(t.slug for t in self.settings.types), self.protocol)
            while not self._stop.is_set() and self._healthy:
                if max_tasks is not None and self.stats.handled >= max_tasks:
                    break
                item = self._next_message()
                if item is not None:
                    self._handle(*item)
                elif idle_timeout_s is not None and self._idle_for(started) > idle_timeout_s:
                    break
        finally:
            for lane in self._lanes:
                self._close_lane(lane)
            control.stop()
            if self._lookup is not None:
                self._lookup.close()
            self._task_thread.close()
            self._services.handler_thread.close()
            if supervisor is not None:
                supervisor.close()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            producer.flush(10.0)
            log.info("worker %s stopped: %s", self.worker_id, self.stats)
        return self.stats

    def _idle_for(self, started: float) -> float:
        now = time.monotonic()
        if not all(lane.assigned for lane in self._lanes) and now - started < _JOIN_ALLOWANCE_S:
            return 0.0
        return now - self._last_activity

    def _next_message(self) -> tuple[_Lane, Message] | None:
        if self._buffer:
            return self._buffer.popleft()
        n = len(self._lanes)
        for i in range(n):
            index = (self._next_lane + i) % n
            lane = self._lanes[index]
            if lane.fatal is not None:
                self._replace_lane(index, lane)
                continue
            self._retry_commits(lane)
            msg = lane.consumer.poll(_POLL_S / n)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError.UNKNOWN_TOPIC_OR_PART:  # one clear line
                    log.warning("topic %s does not exist: run `computectl topics create` "
                                "(waiting for it)", lane.topic)
                elif _is_fatal(msg.error()):
                    lane.fatal = msg.error()  # replaced on the next turn
                else:
                    log.warning("consumer error on %s: %s", lane.topic, msg.error())
                continue
            self._next_lane = (self._next_lane + i + 1) % n  # round robin between types
            return lane, msg
        return None

    def _handle(self, lane: _Lane, msg: Message) -> None:
        self.stats.handled += 1
        self._last_activity = time.monotonic()
        headers = header_dict(msg.headers())
        task = None
        try:
            task = self._codec.decode(msg.value() or b"")
            if not isinstance(task, TaskSubmitted) or task.envelope.task_type is not lane.task_type:
                raise DecodeError(f"a {type(task).__name__} record on {lane.topic}, which holds "
                                  f"{lane.task_type.value} tasks")
            broken = check_task_record(msg.key(), headers, task_id=task.envelope.task_id,
                                       event_id=task.envelope.event_id, avro_name=task.avro_name)
            if broken is not None:  # key / ce_id / ce_type disagree with the envelope
                raise broken
        except DecodeError as exc:
            self.stats.dead_lettered += 1
            # Its FAILED is keyed by the envelope's task id when the envelope could be read.
            owner = task.envelope.task_id if isinstance(task, TaskSubmitted) else None
            if self._emitter.dead_letter(msg, exc, lane.task_type, task_id=owner):
                self._commit(lane, msg)
            return
        step = self._takeover_step(lane, msg, task)
        if step is Step.WAIT:  # stopping, or the partition went while the check waited
            return
        if step is Step.SKIP:
            self.stats.already_ended += 1
            self._commit(lane, msg)
            return
        run = TaskRun(task, headers.get("traceparent"), self._services,
                      stops=stops_from_header(headers.get(STOPS_HEADER)))
        inflight = _InFlight(lane, msg, run)
        with self._cancel_lock:
            written = run.task_id in self._cancel_written
            if run.task_id in self._cancelled:
                run.cancel(CancelReason.USER)
            else:
                self._inflight = inflight  # from now on a cancel reaches the run
        if self._inflight is not inflight:  # cancelled while queued: CANCELLED, never runs
            # The canceller wrote CANCELLED already: a second terminal status would be a duplicate.
            self._finish(lane, msg, RunReport(Outcome.CANCELLED, commit=True) if written
                         else run.execute())
            return
        inflight.call = self._task_thread.submit(lambda: self._execute(inflight))
        self._wait(inflight)
        self._inflight = None
        self._finish(lane, msg, inflight.report, inflight)
        if self._paused:
            self._pause(False)
        self._last_activity = time.monotonic()

    def _execute(self, inflight: _InFlight) -> None:
        try:
            inflight.report = inflight.run.execute()
        except Exception:  # a bug in the runtime itself: leave the record to the group
            log.exception("task %s: the run crashed", inflight.run.task_id)
            inflight.report = RunReport(Outcome.ABORTED, commit=False, healthy=False)

    def _wait(self, inflight: _InFlight) -> None:
        """Poll until the task thread ends; on shutdown, cancel it after the grace period."""
        shutdown_at = abandon_at = None
        while True:
            if inflight.call.wait(_POLL_S):  # returns as soon as the task ends
                return
            self._poll_while_busy()
            if not self._stop.is_set():
                continue
            now = time.monotonic()
            if shutdown_at is None:
                shutdown_at = now + self.settings.shutdown_grace_s
            if self._force.is_set():  # a second signal: no grace
                shutdown_at = min(shutdown_at, now)
            if now >= shutdown_at and abandon_at is None:
                log.info("task %s: shutting down, cancelling it", inflight.run.task_id)
                inflight.run.cancel(CancelReason.SHUTDOWN)
                abandon_at = now + self.settings.timeout_grace_s
            if abandon_at is not None and now >= abandon_at:
                log.error("task %s ignored the shutdown cancel; abandoning it", inflight.run.task_id)
                inflight.run.abandon()
                inflight.report = RunReport(Outcome.ABORTED, commit=False, healthy=False)
                return

    def _poll_while_busy(self) -> None:
        """Keep the members alive. The first record that arrives during a task is kept for
        later and every partition is paused, so nothing more is fetched until the task ends.
        (Pausing at the start of every task would cost each resume a fetch round trip, up to
        ``fetch.wait.max.ms``: half a second per task for short tasks.)"""
        for lane in self._lanes:
            msg = lane.consumer.poll(0)
            if msg is not None and msg.error() and _is_fatal(msg.error()):
                lane.fatal = msg.error()  # replaced once the task ends
            elif msg is not None and not msg.error():
                self._buffer.append((lane, msg))
                self._pause(True)

    def _finish(self, lane: _Lane, msg: Message, report: RunReport | None,
                inflight: _InFlight | None = None) -> None:
        report = report or RunReport(Outcome.ABORTED, commit=False, healthy=False)
        counter = {Outcome.COMPLETED: "completed", Outcome.FAILED: "failed",
                   Outcome.CANCELLED: "cancelled", Outcome.ABORTED: "aborted"}[report.outcome]
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        self.stats.retried += report.retried
        self.stats.fallbacks = self.providers.total()
        if not report.healthy:
            self._healthy = False
        if report.commit and not (inflight and (inflight.lost or inflight.committed)):
            self._commit(lane, msg)

    def _on_cancel(self, task_id: str, status_written: bool = False) -> None:
        """From the control listener's thread."""
        with self._cancel_lock:
            self._cancelled.add(task_id)
            if status_written:
                self._cancel_written.add(task_id)
            inflight = self._inflight
            if inflight is not None and inflight.run.task_id == task_id:
                inflight.run.cancel(CancelReason.USER)

    # ---- Kafka plumbing ---------------------------------------------------------------------------

    def _open_lane(self, task_type: TaskType) -> _Lane:
        ledger = CommitLedger()
        consumer = Consumer({
            **client_config_for(self.protocol, self.kafka.client_config()),
            "group.id": self.settings.group_id(task_type),
            "client.id": self.worker_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",  # a new group starts with the oldest queued task
            "max.poll.interval.ms": self.settings.max_poll_interval_ms,
            **group_config(self.protocol, self.settings.session_timeout_ms),
            "enable.partition.eof": False,
            "on_commit": on_commit(ledger),
            **({"group.instance.id": self.settings.group_instance_id}
               if self.settings.group_instance_id else {}),
        })
        lane = _Lane(task_type, self.kafka.topics.task(task_type), consumer, commits=ledger)

        def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
            lane.assigned = True
            new = {(p.topic, p.partition) for p in partitions}
            lane.owned |= new
            lane.taken_over |= new
            lane.commits.retry_now = True  # a rejoin: send the commits the rebalance rejected
            log.info("assigned %s: %s", lane.topic, sorted(p.partition for p in partitions))
            self._last_activity = time.monotonic()
            if self._paused:
                self._pause(True)

        def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
            self._revoked(lane, {(p.topic, p.partition) for p in partitions})

        def on_lost(c: Consumer, partitions: list[TopicPartition]) -> None:
            # Lost (session expired, fenced): a commit can no longer be made; the next owner's
            # takeover check finds what this worker finished.
            self._revoked(lane, {(p.topic, p.partition) for p in partitions}, lost=True)

        consumer.subscribe([lane.topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
        return lane

    def _retry_commits(self, lane: _Lane) -> None:
        """Send again the commits the broker rejected, for the partitions still owned."""
        due = lane.commits.due(lane.owned, time.monotonic())
        if not due:
            return
        offsets = [TopicPartition(t, p, offset) for (t, p), offset in due]
        log.info("committing again %s", ", ".join(f"{t}[{p}]@{o}" for (t, p), o in due))
        try:
            lane.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            log.info("commit retry on %s failed: %s", lane.topic, exc)

    def _takeover_step(self, lane: _Lane, msg: Message, task: TaskSubmitted) -> Step:
        """For the first records of a partition just taken over: SKIP if the task already has
        its final status (its previous owner died before committing it), RUN if not. While the
        status topic cannot be read, every partition stays paused and the check is asked again
        (takeover.recheck_delay apart); WAIT comes back only if the worker stops or loses the
        partition meanwhile: the record is then neither run nor committed."""
        tp = (msg.topic(), msg.partition())
        if tp not in lane.taken_over or self._lookup is None:
            return Step.RUN
        env = task.envelope
        check = self._lookup.check(env.task_id, env.attempt, msg.timestamp()[1])
        unknown = 0
        while step_for(check) is Step.WAIT:
            unknown += 1
            self.stats.takeover_waits += 1
            delay = recheck_delay(unknown)
            log.warning("task %s: cannot tell whether it already ended (%s); not running it, "
                        "asking again in %.1f s", env.task_id, check.error, delay,
                        extra={"task_id": env.task_id})
            if not self._hold(lane, msg, delay):
                return Step.WAIT
            check = self._lookup.check(env.task_id, env.attempt, msg.timestamp()[1])
        if unknown and self._paused:
            self._pause(False)
        if check.answer is Answer.NOT_ENDED:
            lane.taken_over.discard(tp)  # ran in order: no later record of it has ended
            return Step.RUN
        assert check.ended is not None
        log.info("task %s already ended %s (attempt %d): committing without running it again",
                 env.task_id, check.ended.status.value, check.ended.envelope.attempt,
                 extra={"task_id": env.task_id})
        return Step.SKIP

    def _hold(self, lane: _Lane, msg: Message, delay_s: float) -> bool:
        """Keep the members alive for ``delay_s`` with every partition paused; False if the
        worker stops or ``msg``'s partition is no longer this worker's (revoked, or revoked and
        assigned again: its position went back, so the record will be fetched and checked
        again)."""
        self._pause(True)
        until = time.monotonic() + delay_s
        tp = TopicPartition(msg.topic(), msg.partition())
        while time.monotonic() < until:
            if self._stop.wait(_POLL_S):
                return False
            self._poll_while_busy()
            self._last_activity = time.monotonic()
            if (msg.topic(), msg.partition()) not in lane.owned:
                return False
            try:
                position = lane.consumer.position([tp])[0].offset
            except KafkaException:
                return False
            if position <= msg.offset():
                return False
        return True

    def _revoked(self, lane: _Lane, gone: set[Partition], *, lost: bool = False) -> None:
        lane.owned -= gone
        lane.taken_over -= gone
        log.info("%s %s: %s", "lost" if lost else "revoked", lane.topic, sorted(p for _, p in gone))
        self._buffer = deque(
            (ln, m) for ln, m in self._buffer if (m.topic(), m.partition()) not in gone)
        inflight = self._inflight
        if inflight is not None and inflight.lane is lane and (
                (inflight.msg.topic(), inflight.msg.partition()) in gone):
            if not lost:  # give the running task a moment to finish, so its owner commits it
                inflight.call.wait(self.settings.rebalance_wait_s)
            if not lost and inflight.report is not None and inflight.report.commit:
                msg = inflight.msg
                lane.commits.want((msg.topic(), msg.partition()), msg.offset() + 1,
                                  time.monotonic())
                inflight.committed = True  # by _commit_now, below
            else:
                inflight.lost = True
                log.warning("task %s: partition %s while running; its new owner runs it again",
                            inflight.run.task_id, "lost" if lost else "revoked")
        if not lost:
            self._commit_now(lane, gone)
        lane.commits.forget(gone)

    def _commit_now(self, lane: _Lane, gone: set[Partition]) -> None:
        """Synchronously commit what is pending on partitions being revoked: the member still
        belongs to the group's generation inside the revoke callback, afterwards it cannot."""
        offsets = [TopicPartition(t, p, off) for (t, p) in gone
                   if (off := lane.commits.pending((t, p))) is not None]
        if not offsets:
            return
        try:
            for tp in lane.consumer.commit(offsets=offsets, asynchronous=False) or []:
                if tp.error is None:
                    lane.commits.confirm((tp.topic, tp.partition), tp.offset)
        except KafkaException as exc:
            log.warning("commit of revoked %s failed (%s); their next owner checks the status "
                        "topic before running them", lane.topic, exc)

    def _pause(self, paused: bool) -> None:
        self._paused = paused
        for lane in self._lanes:
            try:
                assignment = lane.consumer.assignment()
                if assignment:
                    (lane.consumer.pause if paused else lane.consumer.resume)(assignment)
            except KafkaException as exc:
                log.warning("pause/resume on %s failed: %s", lane.topic, exc)

    def _commit(self, lane: _Lane, msg: Message) -> None:
        """Commit past ``msg`` (its terminal status is acknowledged already). Asynchronous: the
        next task need not wait for the broker's answer (~10 ms on a loaded broker); a failure
        is logged by :func:`_log_commit` and, like a crash before the commit, means the record
        is run again by whoever owns its partition. Closing the consumer waits for the commits
        still in flight."""
        offset = TopicPartition(msg.topic(), msg.partition(), msg.offset() + 1)
        lane.commits.want((offset.topic, offset.partition), offset.offset, time.monotonic())
        try:
            lane.consumer.commit(offsets=[offset], asynchronous=True)
            fault_point("during_commit")
        except KafkaException as exc:  # e.g. rebalanced away: the new owner redoes the record
            log.warning("commit of %s[%d]@%d failed: %s", msg.topic(), msg.partition(),
                        msg.offset(), exc)

    def _replace_lane(self, index: int, lane: _Lane) -> None:
        """Close a consumer a fatal error left unusable and join again with a new one. Seen in the
        fault suite: a static member restarted right after a SIGKILL is refused with "the
        instance ID is still used by another member" until its old session expires, and the
        worker went on polling the dead consumer, its partitions never served again. Too many
        replacements with no assignment in between stop the worker unhealthy (exit 1), so its
        supervisor starts a fresh process."""
        rejoins = 1 if lane.assigned else lane.rejoins + 1
        log.warning("the %s consumer hit a fatal error (%s): joining again with a new one",
                    lane.topic, lane.fatal)
        self._close_lane(lane)
        self._buffer = deque(item for item in self._buffer if item[0] is not lane)
        if rejoins > _MAX_REJOINS:
            log.error("the %s consumer failed %d times without an assignment: stopping",
                      lane.topic, rejoins - 1)
            self._healthy = False
            return
        if self._stop.wait(_REJOIN_PAUSE_S):
            return
        fresh = self._open_lane(lane.task_type)
        fresh.rejoins = rejoins
        self._lanes[index] = fresh

    def _close_lane(self, lane: _Lane) -> None:
        try:
            lane.consumer.close()  # leaves the group: the others rebalance at once
        except Exception as exc:
            log.warning("closing the %s consumer: %s", lane.topic, exc)
