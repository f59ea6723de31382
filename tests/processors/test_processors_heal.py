"""The processors notice committed offsets that stop moving and heal (issue 15 item 2).

``python -m tests.processors.stuck_commits``: the real processors on the real broker, with Faust's
commits made to do nothing on demand (the fold goes on), the state seen after a broker freeze.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import uuid
from pathlib import Path

from devstack.procs import die_with_parent_fn
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics
from state.consumer_watchdog import read_reports
from tests.kafka_helpers import committed_total, record_count
from tests.processors.scripted import T0, lifecycle
from tests.processors.test_lifecycle_app import App, produce, wait_for

# 8 s: after the rejoin the re-read records are folded again and committed on Faust's next commit
# tick (2.8 s); 4 s was too tight on a loaded two-core machine (CI saw the app exit there)
FAST = {"CONSUMER_WATCHDOG_STALL_AFTER_S": "8", "CONSUMER_WATCHDOG_CHECK_INTERVAL_S": "0.5",
        "CONSUMER_WATCHDOG_PROBE_TIMEOUT_S": "2"}


class StuckApp(App):
    def __init__(self, kafka: KafkaSettings, tmp_path: Path, mode: str) -> None:
        super().__init__(kafka, tmp_path)
        self.stuck = tmp_path / "stuck"
        self.health = tmp_path / "health"
        self.env.update(FAST, STUCK_COMMITS=mode, STUCK_COMMITS_FILE=str(self.stuck),
                        COMPUTE_HEALTH_DIR=str(self.health))

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.processors.stuck_commits", "--no-create-topics"],
                cwd=Path(__file__).resolve().parents[2], env=self.env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent_fn())


def tasks(kafka: KafkaSettings, count: int, rng: random.Random) -> None:
    events = [e for i in range(count)
              for e in lifecycle(str(uuid.uuid4()), T0, rng)]
    produce(kafka, events)


def all_committed(kafka: KafkaSettings, group: str) -> bool:
    status = kafka.topics.status
    return committed_total(kafka, status, group) == record_count(kafka, status)


def test_commits_that_stop_while_the_fold_goes_on_are_healed_by_a_rejoin(
        kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    ensure_topics(kafka_settings)
    group = f"{kafka_settings.topic_prefix}.processors"
    rng = random.Random(15)
    app = StuckApp(kafka_settings, tmp_path, "until-rejoin")
    app.start()
    try:
        tasks(kafka_settings, 5, rng)
        wait_for("first commits", lambda: all_committed(kafka_settings, group), app, 90)
        app.stuck.touch()  # from now on Faust's commits do nothing
        before = committed_total(kafka_settings, kafka_settings.topics.status, group)
        folded = record_count(kafka_settings, kafka_settings.topics.state)  # before: a quick fold
        tasks(kafka_settings, 5, rng)  # could have folded them all by the time it is counted
        wait_for("the fold going on while commits are stuck",
                 lambda: record_count(kafka_settings, kafka_settings.topics.state) > folded, app)
        wait_for("commits resumed, with no manual action",
                 lambda: all_committed(kafka_settings, group), app, 60)
        assert committed_total(kafka_settings, kafka_settings.topics.status, group) > before
        assert "rejoining the consumer group" in app.log.read_text(errors="replace")
        wait_for("the health report back to ok",
                 lambda: set(read_reports(app.health, 30, 600).values()) == {"ok"}, app)
    finally:
        assert app.stop() == 0, app.tail()


def test_commits_that_a_rejoin_does_not_heal_make_the_app_exit_non_zero(
        kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    ensure_topics(kafka_settings)
    group = f"{kafka_settings.topic_prefix}.processors"
    rng = random.Random(16)
    app = StuckApp(kafka_settings, tmp_path, "forever")
    app.start()
    try:
        tasks(kafka_settings, 3, rng)
        wait_for("first commits", lambda: all_committed(kafka_settings, group), app, 90)
        app.stuck.touch()
        tasks(kafka_settings, 3, rng)
        assert app.proc is not None
        # a stall (8 s), a rejoin, a second stall (8 s), then Faust's shutdown
        code = app.proc.wait(90)
        assert code != 0, app.tail()
        log = app.log.read_text(errors="replace")
        assert "rejoining the consumer group" in log and "no progress after a rejoin" in log
        reports = [json.loads(p.read_text()) for p in app.health.glob("*.json")]
        assert reports and not reports[0]["ready"] and reports[0]["action"] == "exit"
    finally:
        app.stop()
