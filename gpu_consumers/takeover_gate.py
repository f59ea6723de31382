"""The worker's side of a takeover: the first records of a partition just assigned pass a gate.

:mod:`gpu_consumers.takeover` reads the status topic; this decides, for each of those records,
whether the worker runs it (:class:`~gpu_consumers.takeover.Step` RUN), commits it without running
(SKIP: its task already ended, its previous owner died before the commit), or leaves it (WAIT).
While the status topic cannot be read the record is held, every partition paused and the members
kept alive, and the check is asked again.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import KafkaException, Message, TopicPartition

from gpu_consumers.lanes import POLL_S, Lane, Lanes
from gpu_consumers.takeover import Answer, StatusLookup, Step, recheck_delay, step_for
from gpu_consumers.worker_stats import WorkerStats
from schemas.events import TaskSubmitted

log = logging.getLogger("gpu_consumers.worker")  # the worker's one logger, whatever module logs


class TakeoverGate:
    def __init__(self, lookup: StatusLookup | None, lanes: Lanes, *, stop: threading.Event,
                 stats: WorkerStats) -> None:
        """``lookup``: None when takeover checks are off (every record runs)."""
        self._lookup, self._lanes, self._stop, self._stats = lookup, lanes, stop, stats

    def step(self, lane: Lane, msg: Message, task: TaskSubmitted) -> Step:
        """For the first records of a partition just taken over: SKIP if the task already has
        its final status (its previous owner died before committing it), RUN if not. While the
        status topic cannot be read, every partition stays paused and the check is asked again
        (takeover.recheck_delay apart); WAIT comes back only if the worker stops or loses the
        partition meanwhile: the record is then neither run nor committed."""
        tp = (msg.topic(), msg.partition())
        if tp not in lane.taken_over or self._lookup is None:
            return Step.RUN
        env = task.envelope
        if lane.commits.finished_here(tp, msg.offset(), msg.timestamp()[1]):
            log.info("task %s was finished by this worker before the partition went: committing "
                     "without running it again", env.task_id, extra={"task_id": env.task_id})
            return Step.SKIP
        check = self._lookup.check(env.task_id, env.attempt, msg.timestamp()[1])
        unknown = 0
        while step_for(check) is Step.WAIT:
            unknown += 1
            self._stats.takeover_waits += 1
            delay = recheck_delay(unknown)
            log.warning("task %s: cannot tell whether it already ended (%s); not running it, "
                        "asking again in %.1f s", env.task_id, check.error, delay,
                        extra={"task_id": env.task_id})
            if not self._hold(lane, msg, delay):
                return Step.WAIT
            check = self._lookup.check(env.task_id, env.attempt, msg.timestamp()[1])
        if unknown:
            self._lanes.resume()
        if check.answer is Answer.NOT_ENDED:
            lane.taken_over.discard(tp)  # ran in order: no later record of it has ended
            return Step.RUN
        assert check.ended is not None
        log.info("task %s already ended %s (attempt %d): committing without running it again",
                 env.task_id, check.ended.status.value, check.ended.envelope.attempt,
                 extra={"task_id": env.task_id})
        return Step.SKIP

    def _hold(self, lane: Lane, msg: Message, delay_s: float) -> bool:
        """Keep the members alive for ``delay_s`` with every partition paused; False if the
        worker stops or ``msg``'s partition is no longer this worker's (revoked, or revoked and
        assigned again: its position went back, so the record will be fetched and checked
        again)."""
        self._lanes.pause(True)
        until = time.monotonic() + delay_s
        tp = TopicPartition(msg.topic(), msg.partition())
        while time.monotonic() < until:
            if self._stop.wait(POLL_S):
                return False
            self._lanes.poll_while_busy()
            self._lanes.touch()
            if (msg.topic(), msg.partition()) not in lane.owned:
                return False
            try:
                position = lane.consumer.position([tp])[0].offset
            except KafkaException:
                return False
            if position <= msg.offset():
                return False
        return True
