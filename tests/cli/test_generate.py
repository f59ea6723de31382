"""``computectl generate`` on the real broker: the request record it produces, the errors it gives
for a bad request (and that it then produces nothing), and ``computectl tail`` showing the record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from generations.plan import GENERATION_REQUEST_CONTENT_TYPE, GenerationRequested
from generations.record import GenerationRecord, GenerationStatus, PredictionRecord
from projection.db.catalog import PostgresCatalog
from projection.db.migrate import migrate
from schemas.enums import GenerationType, TaskStatus, TaskType
from schemas.headers import header_dict
from schemas.topic_admin import ensure_topics
from tests.kafka_helpers import read_topic, record_count
from tests.projection.db.generation_helpers import produce_records

pytestmark = pytest.mark.integration


@pytest.fixture
def kafka(kafka_settings):
    ensure_topics(kafka_settings)
    return kafka_settings


def _env(kafka, database_url: str = "") -> dict[str, str]:
    # COMPUTE_API_KEY unset: with a key in the caller's shell the CLI would go through the API.
    return {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
            "KAFKA_PARTITIONS": str(kafka.partitions), "DATABASE_URL": database_url,
            "COMPUTE_API_KEY": None}


def test_generate_produces_one_request_record_with_the_plan(kafka, database_url):
    migrate(database_url)
    subject = PostgresCatalog(database_url).add_subject("Anna", "loras/anna", 0.8)
    result = CliRunner().invoke(cli, [
        "generate", "generate", "-p", "shot_type_string=full-body shot", "-p", "generated_prompt=a red dress",
        "-p", f"subject_id={subject.id}", "-p", "batch_size=2", "-p", "seed=7", "--agentic",
        "--tenant", "acme", "--output", "json"], env=_env(kafka, database_url))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)

    [msg] = read_topic(kafka, kafka.topics.generations, expect=1)
    assert msg.key().decode() == summary["generation_id"]
    assert header_dict(msg.headers())["content-type"] == GENERATION_REQUEST_CONTENT_TYPE.decode()
    request = GenerationRequested.model_validate_json(msg.value())
    plan = request.plan
    assert plan.generation_id == summary["generation_id"]
    assert [t.task_id for t in plan.tasks] == summary["task_ids"]
    assert request.origin_tenant_id == "acme"
    assert plan.request.generation_type is GenerationType.AGENTIC
    assert [t.task_type for t in plan.tasks] == [TaskType.GENERATION] * 2
    assert [t.params.seed for t in plan.tasks] == [7, 8]
    assert {t.params.prompt for t in plan.tasks} == {"a red dress"}
    assert {t.params.subject_lora_weight for t in plan.tasks} == {0.8}


@pytest.mark.parametrize("args, named", [
    (["generate", "-p", "generated_prompt=x"], "shot_type_string"),  # required field missing
    (["generate", "-p", "shot_type_string=s", "-p", "batch_size=0"], "batch_size"),  # out of range
    (["refine", "-p", "base_image_url=file:///a.png", "-p", "colour=red"], "colour"),  # unknown field
])
def test_a_bad_request_names_the_field_and_produces_nothing(kafka, args, named):
    result = CliRunner().invoke(cli, ["generate", *args], env=_env(kafka))
    assert result.exit_code == 2
    assert named in result.output
    assert record_count(kafka, kafka.topics.generations) == 0


def test_tail_shows_the_request_record_as_json(kafka):
    env = _env(kafka)
    made = CliRunner().invoke(cli, ["generate", "face_fixing", "-p", "base_image_url=https://example.com/a.png",
                                    "--output", "json"], env=env)
    assert made.exit_code == 0, made.output
    shown = CliRunner().invoke(cli, ["tail", "generations", "--from-beginning", "--max", "1"], env=env)
    assert shown.exit_code == 0, shown.output
    record = json.loads(shown.output)
    assert record["type"] == "compute.GenerationRequested/1"
    assert record["value"]["plan"]["generation_id"] == json.loads(made.output)["generation_id"]


@pytest.mark.parametrize("final, exit_code", [("FAILED", 1), ("COMPLETED", 0)])
def test_wait_exits_non_zero_unless_the_generation_completed(kafka, final, exit_code):
    """``generate --wait`` follows the generation's record to its end: exit 0 only when it ended
    COMPLETED. The record is the one the processors would write (their own model), produced
    here once the request is on the broker."""
    env = {**os.environ, **{k: v for k, v in _env(kafka).items() if v is not None}}
    env.pop("COMPUTE_API_KEY", None)
    waiting = subprocess.Popen(
        [str(Path(sys.executable).with_name("computectl")), "generate", "face_fixing", "-p",
         "base_image_url=https://example.com/a.png", "--wait", "120", "--output", "json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        [msg] = read_topic(kafka, kafka.topics.generations, expect=1)
        plan = GenerationRequested.model_validate_json(msg.value()).plan
        now = datetime.now(UTC)
        produce_records(kafka, [GenerationRecord(
            generation_id=plan.generation_id, plan=plan, status=GenerationStatus(final),
            predictions=tuple(PredictionRecord(index=i, task_id=t.task_id, status=TaskStatus(final))
                              for i, t in enumerate(plan.tasks)),
            created_at=now, updated_at=now, completed_at=now)])
        out, err = waiting.communicate(timeout=120)
    finally:
        waiting.kill()
    assert waiting.returncode == exit_code, err
    assert json.loads(out)["status"] == final
