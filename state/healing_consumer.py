"""A confluent-kafka consumer that a :class:`~state.consumer_watchdog.Watchdog` can heal.

It is the projector's consumer (issue 15 item 1: after a 60 s broker freeze it sat idle in
``poll()`` with no assignment, its group EMPTY, for minutes). The watchdog thread judges
progress from the group's committed offsets; its verdict is carried out here, in the consumer's
own thread, between two polls (:meth:`HealingConsumer.heal`): ``RECREATE`` closes the consumer
(committing what is stored) and subscribes a new one, which joins the group afresh; ``EXIT``
raises :class:`~state.consumer_watchdog.ConsumerStalled`. Under static membership
(``group.instance.id``) the new consumer takes the old one's place at once.

Two ways the consumer's own thread can fail to carry a verdict out, both seen after a 60 s
broker freeze (issue 15, the fault suite's broker-freeze, 2 runs of 2): librdkafka's ``close()``
of the stalled consumer never returned (its coordinator connection wedged: requests timed out in
its out-queue), so the thread sat in :meth:`heal` while the watchdog asked for a recreate every
5 s, for minutes. Hence:

- the old consumer is closed in a helper thread and waited for ``close_timeout_s``; a close that
  does not finish is abandoned and the consumer gives up (``ConsumerStalled``: a fresh process
  reaches the broker, as a restart demonstrably does);
- the watchdog thread notes how long a verdict it handed over has gone unserved; past
  ``stall_after_s`` + ``close_timeout_s`` the consumer's thread is stuck (in a call the watchdog cannot interrupt), the
  watchdog reports the give-up (``Action.EXIT``: ``/readyz`` and ``/healthz`` say so) and calls
  ``on_stuck``, which for ``computectl projector`` ends the process non-zero.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
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
    from the polling thread before each poll. Not thread-safe, like the consumer itself.
    ``on_stuck(reason)``: called from the watchdog thread when the polling thread has not
    carried out a verdict for ``stall_after_s + close_timeout_s`` (it is stuck); None: only reported."""

    def __init__(self, config: dict[str, Any], topics: list[str], *, name: str,
                 kafka: KafkaSettings, settings: WatchdogSettings | None,
                 on_stuck: Callable[[str], None] | None = None) -> None:
        self.signals = ConsumerSignals()
        self._config = {**config, "error_cb": self.signals.on_error,
                        "on_commit": self.signals.on_commit}
        self._topics = topics
        self._pending: Verdict | None = None
        # monotonic time of the first verdict handed over and not yet carried out (set by the
        # watchdog thread, cleared by the polling thread once heal() has finished)
        self._unserved_since: float | None = None
        self._on_stuck = on_stuck
        self._stuck_reported = False
        self._close_timeout_s = (settings.close_timeout_s if settings is not None
                                 else WatchdogSettings.model_fields["close_timeout_s"].default)
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
        if not self._close_consumer(self._close_timeout_s):
            reason = (f"closing the stalled consumer did not finish in"
                      f" {self._close_timeout_s:g}s ({verdict.reason})")
            assert self.watchdog is not None
            self.watchdog.give_up(reason)  # /readyz and /healthz say so
            raise ConsumerStalled(reason)
        self.signals.assigned, self.signals.commit_failing = frozenset(), False
        self._consumer = self._new()
        self.recreations += 1
        assert self.watchdog is not None
        self.watchdog.recreated(verdict)
        self._unserved_since = None

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
        if not self._close_consumer(self._close_timeout_s):
            log.error("the consumer did not close in %gs; left behind", self._close_timeout_s)

    # -- internals ---------------------------------------------------------------------------

    def _request(self, verdict: Verdict) -> None:  # the watchdog thread
        self._pending = verdict
        now = time.monotonic()
        if self._unserved_since is None:
            self._unserved_since = now
            return
        assert self.watchdog is not None
        waited = now - self._unserved_since
        # a recreate may rightly take up to close_timeout_s; past that and a stall period more,
        # the thread is not coming back
        patience = self.watchdog.settings.stall_after_s + self._close_timeout_s
        if waited < patience or self._stuck_reported:
            return
        self._stuck_reported = True
        reason = (f"the consumer's thread has not acted on the watchdog for {waited:.0f}s"
                  f" (stuck in the Kafka client?): {verdict.reason}")
        self.watchdog.give_up(reason)
        if self._on_stuck is not None:
            self._on_stuck(reason)

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

    def _close_consumer(self, timeout_s: float) -> bool:
        """Close the current consumer, waiting at most ``timeout_s``; False: it did not finish
        (the helper thread is left to it: librdkafka's close cannot be interrupted)."""
        consumer = self._consumer

        def close() -> None:
            try:
                consumer.close()
            except (KafkaException, RuntimeError) as exc:  # already closed, or the group is gone
                log.warning("closing the consumer: %s", exc)

        closer = threading.Thread(target=close, name="consumer-close", daemon=True)
        closer.start()
        closer.join(timeout_s)
        return not closer.is_alive()
