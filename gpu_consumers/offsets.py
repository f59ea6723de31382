"""Which offsets a worker still has to commit: commits are retried until the broker confirms them.

The worker commits asynchronously after each task. A commit sent while the group rebalances is
rejected (ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID); before this ledger such a
rejection was only logged, the offset stayed behind, and the next owner of the partition (often
the same worker after a restart) ran the finished tasks again: 48 of 800 after a rebalance storm
(issue 15, item 4). The ledger remembers, per partition, the offset wanted and the offset the
broker confirmed; the runtime sends again what is wanted but unconfirmed for the partitions it
still owns (at once after an assignment, else every ``retry_s``), and commits synchronously what a
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


@dataclass
class CommitLedger:
    retry_s: float = RETRY_S
    wanted: dict[Partition, int] = field(default_factory=dict)
    confirmed: dict[Partition, int] = field(default_factory=dict)
    sent_at: dict[Partition, float] = field(default_factory=dict)
    retry_now: bool = False  # set by an assignment: send what is pending without waiting
    retried: int = 0  # commits sent again (a counter for tests and the benchmark)

    def want(self, tp: Partition, offset: int, now: float) -> None:
        """``offset`` (the next record to read) is to be committed; it is being sent now."""
        if offset > self.wanted.get(tp, -1):
            self.wanted[tp] = offset
        self.sent_at[tp] = now

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

    def due(self, owned: Iterable[Partition], now: float) -> list[tuple[Partition, int]]:
        """The (partition, offset) commits to send again now, of the partitions still owned;
        marks them sent."""
        retry_now, self.retry_now = self.retry_now, False
        out = []
        for tp in owned:
            offset = self.pending(tp)
            if offset is None:
                continue
            if retry_now or now - self.sent_at.get(tp, 0.0) >= self.retry_s:
                self.sent_at[tp] = now
                self.retried += 1
                out.append((tp, offset))
        return out

    def forget(self, tps: Iterable[Partition]) -> None:
        """The partitions are gone (revoked or lost): their next owner starts from the broker's
        committed offset."""
        for tp in tps:
            self.wanted.pop(tp, None)
            self.confirmed.pop(tp, None)
            self.sent_at.pop(tp, None)


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
