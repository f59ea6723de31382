"""The worker's lanes: one confluent-kafka consumer per served task type, and their commits.

A :class:`Lane` is one type's consumer in the group ``<group_prefix>.<type slug>`` with manual
commits only: what it owns (kept by the rebalance callbacks), the commits the broker has yet to
confirm (:class:`~gpu_consumers.offsets.CommitLedger`) and the partitions whose next record the
takeover check looks at. :class:`Lanes` are all of them: polled in turn, the record that arrives
while a task runs kept for later with every partition paused, a revoked partition's pending
commits sent before it goes, and a consumer a fatal error left unusable replaced by a new one.
The worker's loop (:mod:`gpu_consumers.runtime`) asks them for the next record and tells them
to commit it once its terminal status is acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from gpu_consumers.fault_points import fault_point
from gpu_consumers.group_protocol import Protocol, client_config_for, group_config
from gpu_consumers.offsets import CommitLedger, Partition, on_commit
from gpu_consumers.settings import WorkerSettings
from schemas.enums import TaskType
from schemas.kafka_settings import KafkaSettings

if TYPE_CHECKING:
    from gpu_consumers.execution import RunReport, TaskRun
    from gpu_consumers.threads import Call

log = logging.getLogger("gpu_consumers.worker")  # the worker's one logger, whatever module logs

POLL_S = 0.1  # one loop turn; also how fast a stop request or a finished task is noticed
_JOIN_ALLOWANCE_S = 60.0  # burst idle clock starts anyway if a group never assigns within this
# A consumer replaced after a fatal error joins again after this pause; a static member's
# previous process (SIGKILLed) holds its instance id until its session (10 s) expires.
_REJOIN_PAUSE_S = 1.0
_MAX_REJOINS = 60  # replacements with no assignment in between: then exit for the supervisor


def _is_fatal(err: KafkaError) -> bool:
    # librdkafka reports a fatal error to poll() as an event with the code _FATAL, whose
    # fatal() flag is not always set.
    return err.fatal() or err.code() == KafkaError._FATAL


@dataclass
class Lane:
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
    # loop replaces it (Lanes._replace); ``rejoins`` counts replacements not yet assigned.
    fatal: KafkaError | None = None
    rejoins: int = 0

    def commit(self, msg: Message) -> None:
        """Commit past ``msg`` (its terminal status is acknowledged already). Asynchronous: the
        next task need not wait for the broker's answer (~10 ms on a loaded broker); and spaced
        (``offsets.COMMIT_SPACING_S``): a task finished within 0.1 s of the lane's last commit
        request goes with the next one, sent on the loop's next turn (also while a task runs).
        A rejection is logged by :func:`~gpu_consumers.offsets.on_commit` and sent again while
        the partition is owned; one never confirmed, like a crash before the commit, means the
        record is run again by whoever owns its partition next, unless the takeover check finds
        it ended.
        Closing the lane sends what is pending and waits for the commits in flight."""
        self.commits.want((msg.topic(), msg.partition()), msg.offset() + 1)
        self.send_commits()
        fault_point("during_commit")

    def send_commits(self) -> None:
        """Send what the ledger says is due: new offsets (spaced) and rejected ones again, for
        the partitions still owned."""
        due = self.commits.due(self.owned, time.monotonic())
        if not due:
            return
        again = [f"{t}[{p}]@{o}" for (t, p), o, repeated in due if repeated]
        if again:
            log.info("committing again %s", ", ".join(again))
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o, _ in due],
                                 asynchronous=True)
        except KafkaException as exc:  # e.g. rebalanced away: the new owner redoes the record
            log.warning("commit on %s failed: %s", self.topic, exc)

    def commit_now(self, gone: set[Partition]) -> None:
        """Synchronously commit what is pending on partitions being revoked: the member still
        belongs to the group's generation inside the revoke callback, afterwards it cannot."""
        offsets = [TopicPartition(t, p, off) for (t, p) in gone
                   if (off := self.commits.pending((t, p))) is not None]
        if not offsets:
            return
        try:
            for tp in self.consumer.commit(offsets=offsets, asynchronous=False) or []:
                if tp.error is None:
                    self.commits.confirm((tp.topic, tp.partition), tp.offset)
        except KafkaException as exc:
            log.warning("commit of revoked %s failed (%s); their next owner checks the status "
                        "topic before running them", self.topic, exc)

    def close(self) -> None:
        try:
            self.commits.retry_now = True  # what the spacing held back; close() waits for it
            self.send_commits()
            self.consumer.close()  # leaves the group: the others rebalance at once
        except Exception as exc:
            log.warning("closing the %s consumer: %s", self.topic, exc)


@dataclass
class InFlight:
    """The record whose task runs now, and what became of it."""

    lane: Lane
    msg: Message
    run: TaskRun
    call: Call = field(init=False)  # the run, in the worker's task thread
    report: RunReport | None = None
    lost: bool = False  # its partition was revoked before it finished: never commit it
    committed: bool = False


class Lanes:
    """Every served type's lane, for one worker."""

    def __init__(self, kafka: KafkaSettings, settings: WorkerSettings, worker_id: str, *,
                 stop: threading.Event, inflight: Callable[[], InFlight | None]) -> None:
        """``stop``: the worker's stop request (a rejoin pause ends early on it); ``inflight``:
        the record whose task runs now, which a revocation of its partition has to settle."""
        self.kafka, self.settings, self.worker_id = kafka, settings, worker_id
        self._stop = stop
        self._inflight = inflight
        self.lanes: list[Lane] = []
        self.buffer: deque[tuple[Lane, Message]] = deque()  # records kept while a task ran
        self.paused = False
        # Too many replacements of a consumer with no assignment: the worker stops unhealthy.
        self.gave_up = False
        self.last_activity = time.monotonic()
        self._next_lane = 0
        self._protocol: Protocol = "classic"

    def open(self, protocol: Protocol) -> None:
        """Subscribe one consumer per served type, with the consumer-group ``protocol``."""
        self._protocol = protocol
        self.lanes = [self._open(t) for t in self.settings.types]

    def close(self) -> None:
        for lane in self.lanes:
            lane.close()

    def touch(self) -> None:
        """Something happened: the burst mode's idle clock starts again."""
        self.last_activity = time.monotonic()

    def idle_for(self, started: float) -> float:
        now = time.monotonic()
        if not all(lane.assigned for lane in self.lanes) and now - started < _JOIN_ALLOWANCE_S:
            return 0.0
        return now - self.last_activity

    def assignment(self) -> list[tuple[str, int]]:
        return sorted(tp for lane in list(self.lanes) for tp in list(lane.owned))

    def next_message(self) -> tuple[Lane, Message] | None:
        if self.buffer:
            return self.buffer.popleft()
        n = len(self.lanes)
        for i in range(n):
            index = (self._next_lane + i) % n
            lane = self.lanes[index]
            if lane.fatal is not None:
                self._replace(index, lane)
                continue
            lane.send_commits()
            msg = lane.consumer.poll(POLL_S / n)
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

    def poll_while_busy(self) -> None:
        """Keep the members alive. The first record that arrives during a task is kept for
        later and every partition is paused, so nothing more is fetched until the task ends.
        (Pausing at the start of every task would cost each resume a fetch round trip, up to
        ``fetch.wait.max.ms``: half a second per task for short tasks.)"""
        for lane in self.lanes:
            lane.send_commits()  # the previous task's, if the spacing held it back
            msg = lane.consumer.poll(0)
            if msg is not None and msg.error() and _is_fatal(msg.error()):
                lane.fatal = msg.error()  # replaced once the task ends
            elif msg is not None and not msg.error():
                self.buffer.append((lane, msg))
                self.pause(True)

    def resume(self) -> None:
        """Fetch again if a held record or a takeover wait paused every partition."""
        if self.paused:
            self.pause(False)

    def pause(self, paused: bool) -> None:
        self.paused = paused
        for lane in self.lanes:
            try:
                assignment = lane.consumer.assignment()
                if assignment:
                    (lane.consumer.pause if paused else lane.consumer.resume)(assignment)
            except KafkaException as exc:
                log.warning("pause/resume on %s failed: %s", lane.topic, exc)

    def _open(self, task_type: TaskType) -> Lane:
        ledger = CommitLedger()
        consumer = Consumer({
            **client_config_for(self._protocol, self.kafka.client_config()),
            "group.id": self.settings.group_id(task_type),
            "client.id": self.worker_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",  # a new group starts with the oldest queued task
            "max.poll.interval.ms": self.settings.max_poll_interval_ms,
            **group_config(self._protocol, self.settings.session_timeout_ms),
            "enable.partition.eof": False,
            "on_commit": on_commit(ledger),
            **({"group.instance.id": self.settings.group_instance_id}
               if self.settings.group_instance_id else {}),
        })
        lane = Lane(task_type, self.kafka.topics.task(task_type), consumer, commits=ledger)

        def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
            lane.assigned = True
            new = {(p.topic, p.partition) for p in partitions}
            lane.owned |= new
            lane.taken_over |= new
            lane.commits.retry_now = True  # a rejoin: send the commits the rebalance rejected
            log.info("assigned %s: %s", lane.topic, sorted(p.partition for p in partitions))
            self.touch()
            if self.paused:
                self.pause(True)

        def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
            self._revoked(lane, {(p.topic, p.partition) for p in partitions})

        def on_lost(c: Consumer, partitions: list[TopicPartition]) -> None:
            # Lost (session expired, fenced): a commit can no longer be made; the next owner's
            # takeover check finds what this worker finished.
            self._revoked(lane, {(p.topic, p.partition) for p in partitions}, lost=True)

        consumer.subscribe([lane.topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
        return lane

    def _revoked(self, lane: Lane, gone: set[Partition], *, lost: bool = False) -> None:
        lane.owned -= gone
        lane.taken_over -= gone
        log.info("%s %s: %s", "lost" if lost else "revoked", lane.topic, sorted(p for _, p in gone))
        self.buffer = deque(
            (ln, m) for ln, m in self.buffer if (m.topic(), m.partition()) not in gone)
        inflight = self._inflight()
        if inflight is not None and inflight.lane is lane and (
                (inflight.msg.topic(), inflight.msg.partition()) in gone):
            if not lost:  # give the running task a moment to finish, so its owner commits it
                inflight.call.wait(self.settings.rebalance_wait_s)
            if not lost and inflight.report is not None and inflight.report.commit:
                msg = inflight.msg
                lane.commits.want((msg.topic(), msg.partition()), msg.offset() + 1)
                inflight.committed = True  # by commit_now, below
            else:
                inflight.lost = True
                log.warning("task %s: partition %s while running; its new owner runs it again",
                            inflight.run.task_id, "lost" if lost else "revoked")
        if not lost:
            lane.commit_now(gone)
        lane.commits.forget(gone, int(time.time() * 1000))

    def _replace(self, index: int, lane: Lane) -> None:
        """Close a consumer a fatal error left unusable and join again with a new one. Seen in the
        fault suite: a static member restarted right after a SIGKILL is refused with "the
        instance ID is still used by another member" until its old session expires, and the
        worker went on polling the dead consumer, its partitions never served again. Too many
        replacements with no assignment in between stop the worker unhealthy (exit 1), so its
        supervisor starts a fresh process."""
        rejoins = 1 if lane.assigned else lane.rejoins + 1
        log.warning("the %s consumer hit a fatal error (%s): joining again with a new one",
                    lane.topic, lane.fatal)
        lane.close()
        self.buffer = deque(item for item in self.buffer if item[0] is not lane)
        if rejoins > _MAX_REJOINS:
            log.error("the %s consumer failed %d times without an assignment: stopping",
                      lane.topic, rejoins - 1)
            self.gave_up = True
            return
        if self._stop.wait(_REJOIN_PAUSE_S):
            return
        fresh = self._open(lane.task_type)
        fresh.rejoins = rejoins
        self.lanes[index] = fresh
