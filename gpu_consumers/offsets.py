"""Which offsets a worker still has to commit: commits are retried until the broker confirms them.

The worker commits asynchronously after each task. A commit sent while the group rebalances is
rejected (ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID); before this ledger such a
rejection was only logged, the offset stayed behind, and the next owner of the partition (often
the same worker after a restart) ran the finished tasks again: 48 of 800 after a rebalance storm
(issue 15, item 4). The ledger remembers, per partition, the offset wanted, the offset sent
and the offset the broker confirmed; the runtime sends what is wanted, at most one request per
``spacing_s`` (COMMIT_SPACING_S), and sends again what is unconfirmed for the partitions it still
owns (at once after an assignment, else every ``retry_s``), and commits synchronously what a
revocation takes away. Bookkeeping only: no Kafka calls here (:func:`on_commit` is the consumer's
callback that feeds the ledger).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, TopicPartition

log = logging.getLogger("gpu_consumers.worker")

Partition = tuple[str, int]

# A commit unconfirmed after this long is sent again (also the spacing of retries while the group
# is still rebalancing, when every attempt is rejected).
RETRY_S = 1.0
# At most one new commit request per lane this often; a task finished meanwhile is committed with
# the next one (the later offset covers it). One commit per task (~150/s per worker on a backlog
# of quick tasks) queued the member's heartbeats behind hundreds of commits on the coordinator's
# connection: "Timed out ConsumerGroupHeartbeatRequest ... held back by preceding OffsetCommit",
# and both workers of a 100,000-task backlog were fenced (docs/PERFORMANCE.md). A lone task's
# commit still goes at once: the spacing only holds back the second commit within 0.1 s.
COMMIT_SPACING_S = 0.1


@dataclass
class CommitLedger:
    retry_s: float = RETRY_S
    spacing_s: float = COMMIT_SPACING_S
    wanted: dict[Partition, int] = field(default_factory=dict)
    confirmed: dict[Partition, int] = field(default_factory=dict)
    sent: dict[Partition, int] = field(default_factory=dict)  # the offset last sent
    sent_at: dict[Partition, float] = field(default_factory=dict)
    last_send: float = float("-inf")  # the lane's last commit request
    retry_now: bool = False  # set by an assignment and at close: send what is pending at once
    retried: int = 0  # commits sent again (a counter for tests and the benchmark)
    # Partitions that went with a commit unconfirmed: (that offset, when they went, epoch ms).
    # Every record below the offset was finished here (its terminal status acknowledged), so if
    # the partition comes back -- a fenced member rejoins and is given the same partitions --
    # those records are committed again without reading the status topic for each of them.
    finished: dict[Partition, tuple[int, int]] = field(default_factory=dict)

    def want(self, tp: Partition, offset: int) -> None:
        """``offset`` (the next record to read) is to be committed (:meth:`due` says when)."""
        if offset > self.wanted.get(tp, -1):
            self.wanted[tp] = offset

    def confirm(self, tp: Partition, offset: int) -> None:
        """The broker confirmed a commit of ``offset``."""
        if offset > self.confirmed.get(tp, -1):
            self.confirmed[tp] = offset

    def pending(self, tp: Partition) -> int | None:
        """The offset still to commit on ``tp``, or None."""
        wanted = self.wanted.get(tp)
        if wanted is None or self.confirmed.get(tp, -1) >= wanted:
            return None
        return wanted

    def due(self, owned: Iterable[Partition], now: float) -> list[tuple[Partition, int, bool]]:
        """The commits to send now, of the partitions still owned, as (partition, offset, again):
        an offset not sent yet once ``spacing_s`` has passed since the lane's last request, one
        sent but unconfirmed (``again``) after ``retry_s``; both at once after an assignment.
        Marks them sent."""
        retry_now, self.retry_now = self.retry_now, False
        spaced = now - self.last_send >= self.spacing_s
        out = []
        for tp in owned:
            offset = self.pending(tp)
            if offset is None:
                continue
            again = self.sent.get(tp, -1) >= offset
            waited = now - self.sent_at.get(tp, 0.0) >= self.retry_s if again else spaced
            if not (retry_now or waited):
                continue
            self.retried += again
            self.sent[tp], self.sent_at[tp] = offset, now
            out.append((tp, offset, again))
        if out:
            self.last_send = now
        return out

    def forget(self, tps: Iterable[Partition], now_ms: int) -> None:
        """The partitions are gone (revoked or lost): their next owner starts from the broker's
        committed offset. What was finished here but not confirmed is kept in ``finished``."""
        for tp in tps:
            offset = self.pending(tp)
            if offset is not None:
                self.finished[tp] = (offset, now_ms)
            self.wanted.pop(tp, None)
            self.confirmed.pop(tp, None)
            self.sent.pop(tp, None)
            self.sent_at.pop(tp, None)

    def finished_here(self, tp: Partition, offset: int, written_ms: int) -> bool:
        """Whether the record at ``offset`` of ``tp``, written at ``written_ms``, is one this
        worker finished before the partition went. The mark is dropped at the first record past
        it (and at one written after the partition went: a topic made again from offset 0)."""
        mark = self.finished.get(tp)
        if mark is None:
            return False
        if offset < mark[0] and written_ms <= mark[1]:
            return True
        del self.finished[tp]
        return False


def on_commit(ledger: CommitLedger) -> Callable[[KafkaError | None, list[TopicPartition]], None]:
    """The on_commit callback of one lane (served by the consumer's poll and close): confirmed
    offsets go into the ledger; a rejected commit stays pending and is sent again."""

    def callback(err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None:
            log.info("offset commit rejected (%s); retried while the partitions are owned", err)
            return
        for tp in partitions:
            if tp.error is None:
                ledger.confirm((tp.topic, tp.partition), tp.offset)
            else:
                log.info("commit of %s[%d]@%d rejected (%s); retried while owned",
                         tp.topic, tp.partition, tp.offset, tp.error)

    return callback
