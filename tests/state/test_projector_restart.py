"""A SIGKILLed projector is back at work within seconds (issue 15; the fault suite's
projector-kill took 44-57 s): a restarted ``computectl projector`` with the same
``PROJECTOR_GROUP_INSTANCE_ID`` is the same static member, so the broker hands it the dead
process's partitions at once instead of waiting out that member's session (45 s).

On the real broker and PostgreSQL, with the real command in a process of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.faults.harness import standard_specs
from devstack.system import COMPUTECTL, service_specs
from projection.db.migrate import migrate
from schemas.enums import TaskType
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics
from tests.projection.db.helpers import fresh_database, wait_for
from tests.state.test_projector_heal import all_completed, submit

RESUME_TARGET_S = 10.0  # docs/RELIABILITY.md: progress resumed <= 10 s after the fault ended


@pytest.fixture
def db_url(database_url: str) -> Iterator[str]:
    with fresh_database(database_url) as url:
        migrate(url)
        yield url


@contextmanager
def projector_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "ab") as out:
        proc = subprocess.Popen([*COMPUTECTL, "projector"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_a_sigkilled_projector_restarted_as_the_same_member_projects_within_10s(
        kafka_settings: KafkaSettings, db_url: str, tmp_path: Path) -> None:
    ensure_topics(kafka_settings)
    env = {**os.environ, "DATABASE_URL": db_url,
           "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
           "KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
           "KAFKA_PARTITIONS": str(kafka_settings.partitions),
           "PROJECTOR_GROUP_INSTANCE_ID": f"projector-{uuid.uuid4().hex[:6]}",
           "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "projector.log"
    with projector_process(env, log) as first:
        ids = submit(kafka_settings, 3)
        wait_for(lambda: all_completed(db_url, ids), timeout_s=90,
                 what=f"the first projector at work (log: {log})")
        first.kill()  # SIGKILL: no LeaveGroup, no final commit
        assert first.wait(10) == -signal.SIGKILL
    with projector_process(env, log) as second:
        restarted = time.monotonic()
        later = submit(kafka_settings, 1)
        wait_for(lambda: all_completed(db_url, later), timeout_s=RESUME_TARGET_S,
                 what=f"a task projected by the restarted projector (log: {log})")
        assert time.monotonic() - restarted <= RESUME_TARGET_S
        assert second.poll() is None


def test_the_fault_suite_runs_the_projector_as_computectl_up_does() -> None:
    """The fault suite measured 44-57 s for the restart above because its projector ran without
    the instance id ``computectl up`` gives it (a dynamic member: the dead one's session is
    waited out); the two stay equal."""
    up = {spec.name: spec.env for spec in service_specs([TaskType.IMAGE_ADJUSTER], 1, 8000)}
    suite = {name: env for name, (_argv, env) in standard_specs(8000).items()}
    for name in ("projector", "processors"):
        assert suite[name] == {**suite[name], **up[name]}, name
