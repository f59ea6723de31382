"""The projector notices when it stops making progress and heals (issue 15 item 1).

On the real broker and PostgreSQL. Seen in issue 15: after a 60 s broker freeze the projector sat
idle in ``poll()`` with no assignment (its group EMPTY) while the status backlog stood still, and
its health said nothing. The first test puts the consumer in that state directly (it leaves the
group and polls on); the freeze tests SIGSTOP a broker of their own. In the fault suite's 60 s
freeze the recreate itself hung (librdkafka's close of the stalled consumer never returned) and
the projector stayed stalled until restarted; the long-freeze test reproduces that in ~30 s.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from devstack.kafka import KafkaBroker
from projection.db.migrate import migrate
from projection.projector import Projector, ProjectorSettings
from schemas.consumer_health import Action
from schemas.enums import TaskStatus
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics
from state.consumer_watchdog import (
    LOCAL,
    ConsumerStalled,
    WatchdogSettings,
    gave_up,
    read_reports,
)
from state.healing_consumer import HealingConsumer
from tests.projection.db.helpers import (
    T0,
    fresh_database,
    lifecycle,
    produce,
    task_row,
    wait_for,
)

# Short enough for tests that run in seconds; the defaults are minutes' worth of patience.
FAST = {"stall_after_s": 3.0, "check_interval_s": 0.3, "probe_timeout_s": 1.5}


@pytest.fixture
def db_url(database_url: str) -> Iterator[str]:
    with fresh_database(database_url) as url:
        migrate(url)
        yield url


@pytest.fixture
def health_dir(tmp_path: Path) -> Path:
    return tmp_path / "health"


class Running:
    def __init__(self, projector: Projector, thread: threading.Thread) -> None:
        self.projector, self.thread = projector, thread
        self.error: BaseException | None = None
        self.leave = threading.Event()  # set: the consumer leaves its group after a batch
        self.left = threading.Event()  # ...and it has left
        self.hang_close: threading.Event | None = None  # set: its close() hangs until this is

    def on_batch(self, _result: object) -> None:
        """In the projector's own thread (the consumer is not to be driven from another): the
        state issue 15 saw, a member gone from its group that polls on, idle."""
        if self.leave.is_set():
            self.leave.clear()
            healing = self.projector.consumer
            healing.consumer.unsubscribe()
            if self.hang_close is not None:
                healing._consumer = HangingClose(healing.consumer, self.hang_close)  # type: ignore[assignment]
            self.left.set()

    def leave_group(self, kafka: KafkaSettings) -> None:
        """Leave after the next batch (one task's records, written here), and wait until it has."""
        self.leave.set()
        submit(kafka, 1)
        # 60 s: right after a long freeze the client's reconnects can time out once (10 s each,
        # seen in CI) and the member rejoins before the trigger is read; 30 s failed under load
        assert self.left.wait(60), "the projector did not project the trigger task"


@contextmanager
def running(db_url: str, kafka: KafkaSettings, health_dir: Path, *,
            session_timeout_ms: int = 6000, instance: str | None = None,
            on_stuck: Callable[[str], None] | None = None,
            **watchdog: float) -> Iterator[Running]:
    settings = ProjectorSettings(group_instance_id=instance or f"projector-{uuid.uuid4().hex[:6]}",
                                 session_timeout_ms=session_timeout_ms)
    hook: list[Running] = []
    projector = Projector(db_url, kafka, create_topics=False, settings=settings,
                          watchdog=WatchdogSettings(**{**FAST, **watchdog}, health_dir=health_dir),
                          on_batch=lambda result: hook[0].on_batch(result), on_stuck=on_stuck)
    stop = threading.Event()
    run = Running(projector, threading.Thread(daemon=True, target=lambda: None))
    hook.append(run)

    def target() -> None:
        try:
            projector.run(stop)
        except BaseException as exc:  # the test reads it
            run.error = exc

    run.thread = threading.Thread(target=target, daemon=True)
    run.thread.start()
    try:
        yield run
    finally:
        stop.set()
        run.thread.join(30)
        assert not run.thread.is_alive() or on_stuck is not None  # a stuck one was reported
        LOCAL.pop(projector.consumer.watchdog.name, None)  # a report a give-up left behind


def submit(kafka: KafkaSettings, count: int) -> list[str]:
    """``count`` tasks through their whole lifecycle (5 status events each), acknowledged."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    produce(kafka, [e for i, t in enumerate(ids) for e in lifecycle(t, start=T0 + timedelta(minutes=i))])
    return ids


def all_completed(db_url: str, ids: list[str]) -> bool:
    rows = [task_row(db_url, t) for t in ids]
    return all(r is not None and r["status"] == TaskStatus.COMPLETED.value for r in rows)


def test_a_consumer_left_without_assignment_is_recreated_and_catches_up(
        kafka_settings: KafkaSettings, db_url: str, health_dir: Path) -> None:
    ensure_topics(kafka_settings)
    with running(db_url, kafka_settings, health_dir) as run:
        first = submit(kafka_settings, 5)
        wait_for(lambda: all_completed(db_url, first), what="the first tasks projected")
        run.leave_group(kafka_settings)
        later = submit(kafka_settings, 5)
        wait_for(lambda: all_completed(db_url, later), timeout_s=30,
                 what="the later tasks projected without anyone restarting the projector")
        assert run.projector.consumer.recreations >= 1
        assert run.thread.is_alive() and run.error is None
        wait_for(lambda: read_reports(health_dir, 30, 600) == {run.projector.consumer.watchdog.name: "ok"},
                 what="the health report back to ok")


def test_a_consumer_that_recreating_does_not_heal_gives_up_and_says_so(
        kafka_settings: KafkaSettings, db_url: str, health_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_topics(kafka_settings)
    with running(db_url, kafka_settings, health_dir) as run:
        first = submit(kafka_settings, 3)
        wait_for(lambda: all_completed(db_url, first), what="the first tasks projected")
        # every new consumer subscribes to nothing: recreating cannot help
        monkeypatch.setattr(run.projector.consumer, "_topics", [f"{kafka_settings.topic_prefix}.none"])
        run.leave_group(kafka_settings)
        name = run.projector.consumer.watchdog.name
        submit(kafka_settings, 3)
        run.thread.join(30)
        assert not run.thread.is_alive(), "the projector should have given up"
        assert isinstance(run.error, ConsumerStalled)
        assert run.projector.consumer.recreations == 1
        checks = read_reports(health_dir, 30, 600)
        assert checks[name].startswith("not-ready: ") and "did not move" in checks[name]
        assert name in gave_up()  # an embedded projector makes its process's /healthz fail


def test_after_a_broker_freeze_the_projector_catches_up_and_is_not_ready_while_frozen(
        db_url: str, health_dir: Path) -> None:
    """A broker of its own, SIGSTOPped for longer than the session timeout and the stall bound
    (issue 15: 60 s against librdkafka's 45 s session; here 12 s against 6 s)."""
    with KafkaBroker() as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers,
                              topic_prefix=f"t{uuid.uuid4().hex[:8]}", partitions=2)
        ensure_topics(kafka)
        with running(db_url, kafka, health_dir) as run:
            name = run.projector.consumer.watchdog.name
            first = submit(kafka, 5)
            wait_for(lambda: all_completed(db_url, first), what="the first tasks projected")
            assert broker.pid is not None
            os.kill(broker.pid, signal.SIGSTOP)
            try:
                wait_for(lambda: read_reports(health_dir, 30, 600).get(name, "").startswith(
                    "not-ready"), timeout_s=12, what="not ready while the broker is frozen")
                assert run.projector.consumer.watchdog.verdict.action is Action.NONE
                time.sleep(12 - FAST["stall_after_s"])  # the fault's length, not a synchronisation
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            later = submit(kafka, 5)
            wait_for(lambda: all_completed(db_url, later), timeout_s=45,
                     what="the tasks written after the freeze projected, with no manual action")
            wait_for(lambda: read_reports(health_dir, 30, 600) == {name: "ok"},
                     what="ready again after the freeze")
            assert run.thread.is_alive() and run.error is None


class HangingClose:
    """The stalled consumer as the fault suite found it after its 60 s freeze: librdkafka's
    ``close()`` never returned (its coordinator connection wedged). A 60 s freeze does not fit a
    test, and a shorter one did not wedge the client here, so the hang is put in by hand;
    everything else is the real consumer."""

    def __init__(self, consumer: object, release: threading.Event) -> None:
        self._consumer, self._release = consumer, release

    def close(self) -> None:
        self._release.wait()  # released at the end of the test, then closed for real
        self._consumer.close()  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._consumer, name)


def test_after_a_long_freeze_a_projector_whose_recreate_hangs_recovers_by_itself(
        db_url: str, health_dir: Path) -> None:
    """The fault suite's failing case (issue 15, 2 runs of 2): the broker frozen for longer than
    the session (20 s against 6 s here; 60 s against 45 s there), then the member without an
    assignment while the backlog grows, and the watchdog's recreate hanging in ``close()``.
    Before the fix the projector's thread sat in that close for good (the watchdog asked for a
    recreate every 5 s, nobody acted) and nothing was projected until a person restarted it.

    Recovering by itself: in this process, or by giving up (``ConsumerStalled``; ``on_stuck``
    for a thread stuck in the client) so that its supervisor starts a fresh one - which this
    test then does, as ``computectl up``'s supervisor (and the fault suite's) would."""
    instance = f"projector-{uuid.uuid4().hex[:6]}"
    stuck, release = threading.Event(), threading.Event()
    with KafkaBroker() as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers,
                              topic_prefix=f"t{uuid.uuid4().hex[:8]}", partitions=2)
        ensure_topics(kafka)
        try:
            with running(db_url, kafka, health_dir, instance=instance,
                         on_stuck=lambda _reason: stuck.set(), close_timeout_s=3.0) as run:
                first = submit(kafka, 5)
                wait_for(lambda: all_completed(db_url, first), what="the first tasks projected")
                assert broker.pid is not None
                os.kill(broker.pid, signal.SIGSTOP)
                try:
                    time.sleep(20)  # the fault's length, not a synchronisation
                finally:
                    os.kill(broker.pid, signal.SIGCONT)
                run.hang_close = release
                run.leave_group(kafka)
                later = submit(kafka, 5)

                def healed_or_gave_up() -> bool:
                    return (all_completed(db_url, later) or stuck.is_set()
                            or not run.thread.is_alive())

                wait_for(healed_or_gave_up, timeout_s=60, what="the later tasks projected, or"
                         " the projector giving up so that it is restarted")
                restart = stuck.is_set() or not run.thread.is_alive()
                if restart:
                    assert stuck.is_set() or isinstance(run.error, ConsumerStalled), run.error
                    name = run.projector.consumer.watchdog.name
                    assert read_reports(health_dir, 30, 600)[name].startswith("not-ready")
                    assert name in gave_up()
            if restart:  # the supervisor's restart: a fresh projector, the same static member
                with running(db_url, kafka, health_dir, instance=instance) as fresh:
                    wait_for(lambda: all_completed(db_url, later), timeout_s=30,
                             what="the later tasks projected by the restarted projector")
                    assert fresh.error is None
        finally:
            release.set()


def test_a_healing_consumer_without_watchdog_is_a_plain_consumer(kafka_settings: KafkaSettings) -> None:
    consumer = HealingConsumer({**kafka_settings.client_config(), "group.id": "g"},
                               [kafka_settings.topics.status], name="n", kafka=kafka_settings,
                               settings=None)
    consumer.heal()  # nothing asked: nothing done
    assert consumer.watchdog is None and consumer.recreations == 0
    consumer.close()
