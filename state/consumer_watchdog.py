"""The I/O around :mod:`schemas.consumer_health`: read a group's offsets, judge them, report.

A long-running consumer (the projector, the processors) owns one :class:`Watchdog`. Every
``check_interval_s`` :meth:`Watchdog.check` reads the group's committed offsets and the
partitions' end offsets with an :class:`OffsetProbe` (an admin client of its own, so a stuck
consumer does not stop the probe), adds what the consumer's own callbacks noted in its
:class:`ConsumerSignals` (assignment, commit failures, fatal errors, a dependency it waits on),
and hands that to :class:`~schemas.consumer_health.ProgressWatch`. The verdict is

- acted on by the consumer (recreate the consumer; exit non-zero), see docs/RELIABILITY.md
  "Self-healing";
- written as a **health report**, ``<COMPUTE_HEALTH_DIR>/<name>.json`` (atomically, every check;
  removed at a clean stop), which the API's ``/readyz`` reads (:func:`read_reports`): a consumer
  that is not making progress, or has stopped reporting, makes the API not ready;
- kept in this process's :data:`LOCAL` registry, for a consumer running inside the API process
  (the embedded projector): ``/readyz`` reads it too, and ``/healthz`` fails once such a
  consumer has given up (``Action.EXIT``), so that the process gets restarted.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.consumer_health import (
    Action,
    Observation,
    Offsets,
    PartitionKey,
    ProgressWatch,
    Verdict,
)
from schemas.errors import ComputeError
from schemas.kafka_settings import KafkaSettings

log = logging.getLogger("state.consumer_watchdog")


class ConsumerStalled(ComputeError):
    """A consumer made no progress, and recreating it did not help: the process should exit
    non-zero so that its supervisor starts a fresh one."""

REPORT_SUFFIX = ".json"


class WatchdogSettings(BaseSettings):
    """``CONSUMER_WATCHDOG_*``; the report folder is ``COMPUTE_HEALTH_DIR``."""

    model_config = SettingsConfigDict(env_prefix="CONSUMER_WATCHDOG_", frozen=True,
                                      extra="ignore", populate_by_name=True)

    # Records to commit whose committed offset did not move for this long: a stall. Longer than
    # a commit interval and a rebalance (a few seconds each), far shorter than the minutes a
    # silent stall lasted in issue 15.
    stall_after_s: float = Field(default=30.0, gt=0)
    # How long a partition may wait its turn while the same consumer commits others (a large
    # backlog is fetched unevenly); None: 6 x stall_after_s (3 minutes). See schemas/consumer_health.py.
    busy_grace_s: float | None = Field(default=None, gt=0)
    # How often the offsets are read: 2 requests to the broker per check.
    check_interval_s: float = Field(default=5.0, gt=0)
    # How long one read of the offsets may take (a frozen broker: it fails after this).
    probe_timeout_s: float = Field(default=5.0, gt=0)
    # How long closing a stalled consumer may take before the process gives up on it: a close
    # normally commits and leaves in well under a second; after a 60 s broker freeze
    # librdkafka's close never returned (issue 15).
    close_timeout_s: float = Field(default=15.0, gt=0)
    # Where health reports are written; None: nowhere (the local registry still has them).
    health_dir: Path | None = Field(default=None, validation_alias=AliasChoices(
        "COMPUTE_HEALTH_DIR", "health_dir"))


@dataclass
class ConsumerSignals:
    """What only the consumer knows, set from its own thread or callbacks (plain assignments:
    the watchdog reads a consistent-enough snapshot)."""

    assigned: frozenset[PartitionKey] | None = None
    waiting_on: str | None = None
    commit_failing: bool = False
    fatal: str | None = None

    def on_error(self, err: KafkaError) -> None:
        """librdkafka's ``error_cb``: fatal errors end the consumer; the rest are logged (they
        are retried inside the client: _ALL_BROKERS_DOWN, _TRANSPORT, timeouts)."""
        if err.fatal():
            self.fatal = err.str()
        log.warning("Kafka client error: %s", err.str())

    def on_commit(self, err: KafkaError | None, _partitions: Any) -> None:
        """librdkafka's ``on_commit``: remember whether the last commit failed (_NO_OFFSET is
        an empty commit, not a failure)."""
        self.commit_failing = err is not None and err.code() != KafkaError._NO_OFFSET


class OffsetProbe:
    """The group's committed offsets and the end offsets of ``topics``' partitions: two
    requests (plus one for partitions with nothing committed). The committed offsets are read
    by a consumer that never subscribes (it does not join the group), not by the admin client:
    librdkafka 2.16's admin ListConsumerGroupOffsets crashed the process (SIGSEGV in
    rd_kafka_handle_OffsetFetch -> rd_kafka_cgrp_op, an admin client has no group handle) when
    its answer came back after a broker freeze."""

    def __init__(self, kafka: KafkaSettings, group: str, topics: Iterable[str],
                 timeout_s: float = 5.0) -> None:
        self._config = {**kafka.client_config(), "client.id": f"{group}-watchdog"}
        self._admin: AdminClient | None = None
        self._committed = Consumer({**self._config, "group.id": group,
                                    "enable.auto.commit": False})
        self._group = group
        self._topics = list(topics)
        self._timeout_s = timeout_s
        self._partitions: list[TopicPartition] = []

    def read(self) -> dict[PartitionKey, Offsets] | None:
        """None when the broker does not answer in time, or answers with an error."""
        try:
            return self._read()
        except (KafkaException, TimeoutError) as exc:  # a future's TimeoutError too
            log.info("offsets unreadable: %r", exc)
            # A new client next time: after a broker freeze librdkafka's admin client kept
            # sending a stale leader epoch (FENCED_LEADER_EPOCH at every ListOffsets, measured
            # for minutes); a fresh one reads fresh metadata.
            self._admin, self._partitions = None, []
            return None

    def _read(self) -> dict[PartitionKey, Offsets]:
        t = self._timeout_s
        if self._admin is None:
            self._admin = AdminClient(self._config)
        if not self._partitions:
            meta = self._admin.list_topics(timeout=t)
            self._partitions = [TopicPartition(name, p) for name in self._topics
                                if name in meta.topics for p in meta.topics[name].partitions]
        tps = self._partitions
        ends = self._admin.list_offsets({tp: OffsetSpec.latest() for tp in tps},
                                        request_timeout=t)
        committed = {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None)
                     for tp in self._committed.committed(tps, timeout=t)}
        end = {(tp.topic, tp.partition): f.result(timeout=t).offset for tp, f in ends.items()}
        bare = [tp for tp in tps if committed.get((tp.topic, tp.partition)) is None]
        start: dict[PartitionKey, int] = {}
        if bare:
            starts = self._admin.list_offsets({tp: OffsetSpec.earliest() for tp in bare},
                                              request_timeout=t)
            start = {(tp.topic, tp.partition): f.result(timeout=t).offset
                     for tp, f in starts.items()}
        return {key: Offsets(committed.get(key), end[key], start.get(key, 0)) for key in end}

    def close(self) -> None:
        self._committed.close()
        self._admin = None


@dataclass
class Report:
    name: str
    verdict: Verdict
    at: float = field(default_factory=time.time)  # wall clock: read by other processes

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "pid": os.getpid(), "at": self.at, **self.verdict.as_dict()}


# name -> the latest report of a consumer running in this process (the embedded projector)
LOCAL: dict[str, Report] = {}
_LOCAL_LOCK = threading.Lock()


class Watchdog:
    """One consumer's judge and reporter. :meth:`check` from one thread at a time."""

    def __init__(self, name: str, probe: OffsetProbe, signals: ConsumerSignals,
                 settings: WatchdogSettings, *, clock: Callable[[], float] = time.monotonic,
                 recreate: bool = True) -> None:
        self.name = name
        self.signals = signals
        self.settings = settings
        self.watch = ProgressWatch(settings.stall_after_s, recreate=recreate,
                                   busy_grace_s=settings.busy_grace_s)
        self._probe = probe
        self._clock = clock
        self._last_logged: Verdict | None = None

    @property
    def verdict(self) -> Verdict:
        return self.watch.last

    def check(self) -> Verdict:
        """Read the offsets, judge, report; the verdict's action is the caller's to carry out."""
        offsets = self._probe.read()
        s = self.signals
        verdict = self.watch.observe(Observation(
            at=self._clock(), offsets=offsets, assigned=s.assigned, waiting_on=s.waiting_on,
            commit_failing=s.commit_failing, fatal=s.fatal))
        self._log(verdict)
        self.report(verdict)
        return verdict

    def recreated(self, verdict: Verdict | None = None) -> None:
        """The consumer was recreated on ``verdict`` (the one that asked for it: the latest
        verdict may be another, e.g. offsets unreadable while the old consumer closed)."""
        self.watch.recreated(self._clock(), verdict)

    def give_up(self, reason: str) -> None:
        """The consumer cannot be healed in this process: report ``Action.EXIT`` (read by
        /readyz and :func:`gave_up`), from any thread."""
        verdict = self.watch.give_up(reason)
        self._log(verdict)
        self.report(verdict)

    def report(self, verdict: Verdict) -> None:
        report = Report(self.name, verdict)
        with _LOCAL_LOCK:
            LOCAL[self.name] = report
        folder = self.settings.health_dir
        if folder is None:
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{self.name}{REPORT_SUFFIX}"
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(report.as_dict()))
            os.replace(tmp, path)
        except OSError as exc:  # a full disk must not stop the consumer
            log.warning("cannot write the health report in %s: %s", folder, exc)

    def close(self, *, gave_up: bool = False) -> None:
        """A clean stop: the report goes (a consumer that stopped on purpose is not a stalled
        one). ``gave_up``: it stays, saying so, until a restarted consumer replaces it."""
        try:
            self._probe.close()
        except RuntimeError:
            pass  # closed already
        if gave_up:
            return
        with _LOCAL_LOCK:
            LOCAL.pop(self.name, None)
        if self.settings.health_dir is not None:
            (self.settings.health_dir / f"{self.name}{REPORT_SUFFIX}").unlink(missing_ok=True)

    def _log(self, verdict: Verdict) -> None:
        last, self._last_logged = self._last_logged, verdict
        if last is not None and (last.ready, last.reason) == (verdict.ready, verdict.reason):
            return
        if verdict.ready:
            if last is not None:
                log.info("%s: making progress again", self.name)
        elif verdict.action is Action.NONE:
            log.warning("%s: not ready: %s", self.name, verdict.reason)
        else:
            log.error("%s: not making progress (%s): %s", self.name, verdict.action.value,
                      verdict.reason)


class WatchdogThread:
    """Runs :meth:`Watchdog.check` every ``check_interval_s`` in a daemon thread and hands a
    verdict with an action to ``on_action`` (which must only set a flag for the consumer's own
    thread: the consumer is not thread-safe to recreate from here)."""

    def __init__(self, watchdog: Watchdog, on_action: Callable[[Verdict], None]) -> None:
        self.watchdog = watchdog
        self._on_action = on_action
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watchdog-{watchdog.name}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.watchdog.settings.probe_timeout_s * 4)

    def _run(self) -> None:
        interval = self.watchdog.settings.check_interval_s
        while not self._stop.wait(interval):
            try:
                verdict = self.watchdog.check()
            except Exception:  # the watchdog must not die of its own bug
                log.exception("%s: health check failed", self.watchdog.name)
                continue
            if verdict.action is not Action.NONE:
                self._on_action(verdict)


# -- reading the reports (the API's /readyz) -------------------------------------------------

def read_reports(folder: Path | None, stale_after_s: float, forget_after_s: float,
                 now: float | None = None) -> dict[str, str]:
    """Each consumer's state as /readyz shows it: "ok", "not-ready: <reason>", or "stale: ...".

    The reports of this process (:data:`LOCAL`) and those in ``folder``. A report older than
    ``stale_after_s`` (its process hung, or was killed) is not ready; one older than
    ``forget_after_s`` is left out (a consumer removed for good, not restarted)."""
    now = time.time() if now is None else now
    reports: dict[str, dict[str, Any]] = {}
    with _LOCAL_LOCK:
        for name, report in LOCAL.items():
            reports[name] = report.as_dict()
    if folder is not None and folder.is_dir():
        for path in sorted(folder.glob(f"*{REPORT_SUFFIX}")):
            try:
                doc = json.loads(path.read_text())
                reports.setdefault(str(doc["name"]), doc)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being replaced, or not ours
    checks: dict[str, str] = {}
    for name, doc in reports.items():
        age = now - float(doc.get("at", 0))
        if age > forget_after_s:
            continue
        if age > stale_after_s:
            checks[name] = f"stale: no report for {age:.0f}s"
        elif not doc.get("ready", False):
            checks[name] = f"not-ready: {doc.get('reason') or 'unknown'}"
        else:
            checks[name] = "ok"
    return checks


def gave_up() -> list[str]:
    """Consumers of this process that exited (Action.EXIT): the process needs a restart."""
    with _LOCAL_LOCK:
        return [name for name, r in LOCAL.items() if r.verdict.action is Action.EXIT]
