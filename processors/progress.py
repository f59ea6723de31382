"""The processors' progress watchdog (issue 15 item 2).

Seen after a broker freeze: ``UnknownMemberIdError``, then "Timer commit is overlapping", and one
status partition's committed offset stood still for 4.5+ minutes while the fold went on. Faust
commits only offsets whose records were all acknowledged (faust-streaming issues #312, #318, #559
describe gaps and stale generations that stop a partition's commits for good), and the lease
timer (processors/lease_timer.py) judges a partition only once its committed offset has reached
the end offsets it noted: a partition that stops committing also stops its leases.

Every ``check_interval_s`` (``CONSUMER_WATCHDOG_*``) an ``app.timer`` reads the group's committed
offsets and the end offsets of the status and task topics (the fold's sources: quick to commit;
the generations topic is left out, its orchestrator may run an evaluator model for minutes) and
judges them with :class:`schemas.consumer_health.ProgressWatch`:

- a stalled partition first makes the consumer **rejoin** the group (aiokafka's
  ``request_rejoin``: the partitions are revoked and assigned again, and Faust seeks them to the
  committed offsets, which clears its acknowledgement bookkeeping);
- if the same partitions stall again, the app **crashes**: ``computectl processors`` exits
  non-zero and its supervisor starts it again (with ``PROCESSORS_GROUP_INSTANCE_ID``, static
  membership, the new process takes the partitions back at once).

While Faust rebalances or recovers its tables nothing is committed by design: the watch is told it
waits (not ready, no action). The verdict is written as a health report
(state/consumer_watchdog.py) that the API's ``/readyz`` reads.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from schemas.consumer_health import Action, Verdict
from schemas.kafka_settings import KafkaSettings
from state.consumer_watchdog import (
    ConsumerSignals,
    ConsumerStalled,
    OffsetProbe,
    Watchdog,
    WatchdogSettings,
)

log = logging.getLogger("processors.progress")


class ProgressWatchdog:
    def __init__(self, app: Any, kafka: KafkaSettings, group: str, topics: list[str],
                 settings: WatchdogSettings, *, name: str) -> None:
        self._app = app
        self._topics = frozenset(topics)
        self.signals = ConsumerSignals()
        self.watchdog = Watchdog(name, OffsetProbe(kafka, group, topics, settings.probe_timeout_s),
                                 self.signals, settings)
        self.rejoins = 0
        self._closed = False

    async def check(self) -> None:
        app = self._app
        if self._closed:
            return
        busy = app.rebalancing or app.in_recovery
        self.signals.waiting_on = "a rebalance or table recovery" if busy else None
        self.signals.assigned = frozenset((tp.topic, tp.partition) for tp in app.consumer.assignment()
                                          if tp.topic in self._topics)
        verdict = await asyncio.to_thread(self.watchdog.check)
        if verdict.action is Action.RECREATE:
            self._rejoin(verdict)
        elif verdict.action is Action.EXIT:
            log.critical("the processors made no progress after a rejoin; stopping: %s",
                         verdict.reason)
            await app.crash(ConsumerStalled(f"no progress after a rejoin: {verdict.reason}"))

    async def on_shutdown(self, app: Any = None, **_: Any) -> None:
        crashed = getattr(self._app, "crash_reason", None) is not None
        self._closed = True
        await asyncio.to_thread(self.watchdog.close, gave_up=crashed)

    def _rejoin(self, verdict: Verdict) -> None:
        log.error("rejoining the consumer group: %s", verdict.reason)
        thread = self._app.consumer._thread  # faust's aiokafka consumer runs in its own loop
        consumer = thread._ensure_consumer()
        thread.thread_loop.call_soon_threadsafe(consumer._coordinator.request_rejoin)
        self.rejoins += 1
        self.watchdog.recreated()


def install(app: Any, kafka: KafkaSettings, group: str, topics: list[str],
            settings: WatchdogSettings | None = None, *, name: str) -> ProgressWatchdog:
    settings = settings or WatchdogSettings()
    watch = ProgressWatchdog(app, kafka, group, topics, settings, name=name)
    app.timer(settings.check_interval_s, name="watch_progress")(watch.check)
    app.on_before_shutdown.connect(watch.on_shutdown)
    return watch
