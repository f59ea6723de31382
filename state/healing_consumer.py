"""A confluent-kafka consumer that a :class:`~state.consumer_watchdog.Watchdog` can heal.

It is the projector's consumer (issue 15 item 1: after a 60 s broker freeze it sat idle in
``poll()`` with no assignment, its group EMPTY, for minutes). The watchdog thread judges
progress from the group's committed offsets; its verdict is carried out here, in the consumer's
own thread, between two polls (:meth:`HealingConsumer.heal`): ``RECREATE`` closes the consumer
(committing what is stored) and subscribes a new one, which joins the group afresh; ``EXIT``
raises :class:`~state.consumer_watchdog.ConsumerStalled`. Under static membership
(``group.instance.id``) the new consumer takes the old one's place at once.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from schemas.consumer_health import Action, Verdict
from schemas.kafka_settings import KafkaSettings
from state.consumer_watchdog import (
    ConsumerSignals,
    ConsumerStalled,
    OffsetProbe,
    Watchdog,
    WatchdogSettings,
    WatchdogThread,
)

log = logging.getLogger("state.healing_consumer")


class HealingConsumer:
    """``Consumer(config)`` subscribed to ``topics``, with its watchdog (``settings`` None: no
    watchdog). ``poll``/``consume``/``store_offsets`` as confluent-kafka's; call :meth:`heal`
    from the polling thread before each poll. Not thread-safe, like the consumer itself."""

    def __init__(self, config: dict[str, Any], topics: list[str], *, name: str,
                 kafka: KafkaSettings, settings: WatchdogSettings | None) -> None:
        self.signals = ConsumerSignals()
        self._config = {**config, "error_cb": self.signals.on_error,
                        "on_commit": self.signals.on_commit}
        self._topics = topics
        self._pending: Verdict | None = None
        self.recreations = 0
        self._consumer = self._new()
        self.watchdog: Watchdog | None = None
        self._thread: WatchdogThread | None = None
        if settings is not None:
            probe = OffsetProbe(kafka, config["group.id"], topics, settings.probe_timeout_s)
            self.watchdog = Watchdog(name, probe, self.signals, settings)
            self._thread = WatchdogThread(self.watchdog, self._request)

    @property
    def consumer(self) -> Consumer:
        return self._consumer

    def start_watchdog(self) -> None:
        if self._thread is not None:
            self._thread.start()

    def heal(self) -> None:
        """Carry out the watchdog's last verdict, if it asked for something."""
        verdict, self._pending = self._pending, None
        if verdict is None:
            return
        if verdict.action is Action.EXIT:
            raise ConsumerStalled(f"no progress after recreating the consumer: {verdict.reason}")
        log.error("recreating the consumer: %s", verdict.reason)
        self._close_consumer()
        self.signals.assigned, self.signals.commit_failing = frozenset(), False
        self._consumer = self._new()
        self.recreations += 1
        assert self.watchdog is not None
        self.watchdog.recreated()

    def poll(self, timeout: float) -> Message | None:
        return self._consumer.poll(timeout)

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        return self._consumer.consume(num_messages, timeout)

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        self._consumer.store_offsets(offsets=offsets)

    def close(self, *, gave_up: bool = False) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
        if self.watchdog is not None:
            self.watchdog.close(gave_up=gave_up)
        self._close_consumer()

    # -- internals ---------------------------------------------------------------------------

    def _request(self, verdict: Verdict) -> None:  # the watchdog thread
        self._pending = verdict

    def _new(self) -> Consumer:
        consumer = Consumer(self._config)
        consumer.subscribe(self._topics, on_assign=self._assigned, on_revoke=self._revoked,
                           on_lost=self._revoked)
        self.signals.assigned = frozenset()
        return consumer

    def _assigned(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # cooperative-sticky: the partitions added (eager strategies: the whole assignment,
        # after a revoke of the whole previous one)
        added = {(tp.topic, tp.partition) for tp in partitions}
        self.signals.assigned = frozenset((self.signals.assigned or frozenset()) | added)

    def _revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self.signals.assigned = frozenset((self.signals.assigned or frozenset()) - gone)

    def _close_consumer(self) -> None:
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:  # already closed, or the group is gone
            log.warning("closing the consumer: %s", exc)
