"""The worker: Kafka consumer groups in, one task at a time, statuses out, then the commit.

One confluent-kafka consumer per served task type, in the group ``<group_prefix>.<type slug>``
(so adding processes shares a type's partitions), manual commits only: the *lanes*
(:mod:`gpu_consumers.lanes`: polling, pausing, commits, the rebalance callbacks). This module is
the loop, and the loop is short:

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
(:mod:`gpu_consumers.takeover`, through :mod:`gpu_consumers.takeover_gate`): one whose task
already ended for good (its previous owner died between the terminal status and the commit) is
committed without running again.

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
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from confluent_kafka import Message, Producer
from prometheus_client import start_http_server

from gpu_consumers.control import CancelledIds, CancelReason, ControlListener
from gpu_consumers.emitter import Emitter
from gpu_consumers.execution import Outcome, RunReport, Services, TaskRun
from gpu_consumers.group_protocol import Protocol, choose_protocol
from gpu_consumers.handlers.handler_set import HandlerFactory, HandlerSet, Providers
from gpu_consumers.lanes import POLL_S, InFlight, Lane, Lanes
from gpu_consumers.providers import ProviderRouter, with_provider_handlers
from gpu_consumers.settings import ContentPolicy, WorkerSettings
from gpu_consumers.storage import OutputStore
from gpu_consumers.supervisor import ChildKit, Supervisor
from gpu_consumers.takeover import StatusLookup, Step
from gpu_consumers.takeover_gate import TakeoverGate
from gpu_consumers.threads import ReusableThread
from gpu_consumers.worker_stats import WorkerStats
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

__all__ = ["Worker", "WorkerStats", "new_worker_id"]  # WorkerStats lives in worker_stats.py

log = logging.getLogger("gpu_consumers.worker")

# Idempotent producer: a status or DLQ record is written once even when librdkafka retries it.
# Its linger.ms is WorkerSettings.status_linger_ms: PROCESSING waits for a quick task's terminal
# status, whose flush sends both at once (flush ignores linger.ms).
_PRODUCER_CONFIG = {"enable.idempotence": True, "acks": "all"}


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


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
        self._inflight: InFlight | None = None
        self._task_thread = ReusableThread("task")  # runs each task, so _wait can give up on one
        # The types' consumers; a revocation settles the task in flight on its partition.
        self._lanes = Lanes(kafka, settings, self.worker_id, stop=self._stop,
                            inflight=lambda: self._inflight)
        self._takeover: TakeoverGate  # made by run(), with or without its status lookup
        self.protocol: Protocol = "classic"  # the consumer-group protocol run() chose

    @property
    def healthy(self) -> bool:
        return self._healthy and not self._lanes.gave_up

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
        return self._lanes.assignment()

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
                                    start_timeout_s=s.child_start_timeout_s,
                                    progress_interval_s=s.progress_interval_s)
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
        lookup = None
        if self.settings.takeover_lookback_s > 0:
            lookup = StatusLookup(
                self.kafka, self._codec, lookback_s=self.settings.takeover_lookback_s,
                scan_max=self.settings.takeover_scan_max, client_id=f"{self.worker_id}-takeover")
        self._takeover = TakeoverGate(lookup, self._lanes, stop=self._stop, stats=self.stats)
        started = time.monotonic()
        try:
            control.start()
            self.protocol = choose_protocol(
                self.kafka, self.settings.group_protocol,
                [self.settings.group_id(t) for t in self.settings.types],
                self.settings.session_timeout_ms, stop=self._stop.is_set)
            self._lanes.open(self.protocol)
            log.info("worker %s serving %s (%s group protocol)", self.worker_id,
                     ", ".join(t.slug for t in self.settings.types), self.protocol)
            while not self._stop.is_set() and self.healthy:
                if max_tasks is not None and self.stats.handled >= max_tasks:
                    break
                item = self._lanes.next_message()
                if item is not None:
                    self._handle(*item)
                elif idle_timeout_s is not None and self._lanes.idle_for(started) > idle_timeout_s:
                    break
        finally:
            self._lanes.close()
            control.stop()
            if lookup is not None:
                lookup.close()
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

    def _handle(self, lane: Lane, msg: Message) -> None:
        self.stats.handled += 1
        self._lanes.touch()
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
                lane.commit(msg)
            return
        step = self._takeover.step(lane, msg, task)
        if step is Step.WAIT:  # stopping, or the partition went while the check waited
            return
        if step is Step.SKIP:
            self.stats.already_ended += 1
            lane.commit(msg)
            return
        run = TaskRun(task, headers.get("traceparent"), self._services,
                      stops=stops_from_header(headers.get(STOPS_HEADER)))
        inflight = InFlight(lane, msg, run)
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
        self._lanes.resume()
        self._lanes.touch()

    def _execute(self, inflight: InFlight) -> None:
        try:
            inflight.report = inflight.run.execute()
        except Exception:  # a bug in the runtime itself: leave the record to the group
            log.exception("task %s: the run crashed", inflight.run.task_id)
            inflight.report = RunReport(Outcome.ABORTED, commit=False, healthy=False)

    def _wait(self, inflight: InFlight) -> None:
        """Poll until the task thread ends; on shutdown, cancel it after the grace period."""
        shutdown_at = abandon_at = None
        while True:
            if inflight.call.wait(POLL_S):  # returns as soon as the task ends
                return
            self._lanes.poll_while_busy()
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

    def _finish(self, lane: Lane, msg: Message, report: RunReport | None,
                inflight: InFlight | None = None) -> None:
        report = report or RunReport(Outcome.ABORTED, commit=False, healthy=False)
        counter = {Outcome.COMPLETED: "completed", Outcome.FAILED: "failed",
                   Outcome.CANCELLED: "cancelled", Outcome.ABORTED: "aborted"}[report.outcome]
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        self.stats.retried += report.retried
        self.stats.fallbacks = self.providers.total()
        if not report.healthy:
            self._healthy = False
        if report.commit and not (inflight and (inflight.lost or inflight.committed)):
            lane.commit(msg)

    def _on_cancel(self, task_id: str, status_written: bool = False) -> None:
        """From the control listener's thread."""
        with self._cancel_lock:
            self._cancelled.add(task_id)
            if status_written:
                self._cancel_written.add(task_id)
            inflight = self._inflight
            if inflight is not None and inflight.run.task_id == task_id:
                inflight.run.cancel(CancelReason.USER)
