"""A producer in another language, written from docs/WIRE_FORMAT.md alone, against the real system.

``tests/conformance/java`` (built by ``make conformance``) writes tasks with Apache Avro's
``BinaryMessageEncoder`` and the plain Kafka client with its DEFAULT partitioner (murmur2), and
reads the status events back, each decoded with the writer schema it finds in the schema store
topic. Here, on the real broker: TWO processors instances (``python -m processors.cli``, as
tests/processors start them) and real workers (``gpu_consumers.runtime.Worker`` with the real
handlers and classical providers, as tests/gpu_consumers run them).

Checked: the Java tasks of three types run to COMPLETED; the negative cases (wrong key, no
headers, ce_id / ce_type disagreeing with the envelope, an unknown fingerprint, garbage) end as
schemas/record_rules.py says, and the partition keeps moving; a Java task whose worker dies is
leased and retried by whichever processors instance owns its partition, and removed from the
submissions changelog on the partition it was written to; every status of a task sits on the
partition the Java client chose for the task; traces continue (or, without a traceparent, are
derived from the task id); every status record's schema is in the store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from PIL import Image

from gpu_consumers.handlers.handler_set import registry
from gpu_consumers.inputs import InputFetcher, InputSettings
from gpu_consumers.model_cache import ModelCache
from gpu_consumers.models import ModelProfile, ModelRegistry
from gpu_consumers.runtime import Worker
from gpu_consumers.storage import FileStore
from processors.settings import ProcessorSettings
from schemas import avro_files
from schemas.codec import EventCodec
from schemas.emit import produce_event
from schemas.enums import TaskStatus, TaskType
from schemas.events import Envelope, StatusChanged, TaskSubmitted
from schemas.headers import task_trace_id
from schemas.kafka_settings import KafkaSettings
from schemas.partitioning import key_partition
from schemas.topic_admin import ensure_topics
from tests.gpu_consumers.runtime_helpers import Running, worker_settings
from tests.kafka_helpers import StatusLog, wait_for
from tests.processors.test_lifecycle_app import App, latest_states, read_all

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / ".cache" / "conformance-java"
MAIN = "compute.conformance.Conformance"
# Six partitions: with two, CRC-32 and murmur2 agree on half the keys and would hide a mismatch.
PARTITIONS = 6
WORKER_TYPES = [TaskType.IMAGE_ADJUSTER, TaskType.BACKGROUND_REMOVE, TaskType.DETAIL_ENHANCER]
COMPLETED_CASES = ["image_adjuster", "background_remove", "detail_enhancer", "no_headers", "after_faults"]
# Each refused case, and what its FAILED message must name.
REFUSED = {"wrong_key": "the key must be the task id", "wrong_ce_id": "header ce_id",
           "wrong_ce_type": "header ce_type", "wrong_fingerprint": "schema",
           "garbage": "could not be read"}
DEADLINE_S = 120.0


@pytest.fixture(scope="module")
def java_classpath() -> str:
    """``make conformance`` (what ``make test`` runs first): the jar and its runtime jars."""
    if shutil.which("java") is None or shutil.which("mvn") is None:
        pytest.fail("the conformance program needs a JDK 17 and Maven 3 (apt-get install maven)")
    subprocess.run(["make", "-s", "conformance"], cwd=REPO, check=True, timeout=900)
    return f"{BUILD / 'wire-conformance-1.jar'}{os.pathsep}{BUILD / 'lib'}/*"


def java(classpath: str, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run(["java", "-cp", classpath, MAIN, *args], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def exported_schemas(folder: Path) -> Path:
    """``computectl schemas export``, as a developer in another language gets the schemas (the
    command itself, run in this process)."""
    from click.testing import CliRunner

    from cli.main import cli

    result = CliRunner().invoke(cli, ["schemas", "export", str(folder)])
    assert result.exit_code == 0, result.output
    return folder


def processors_members(admin: AdminClient, group: str) -> int:
    """How many members of the processors' group hold partitions now."""
    [future] = admin.describe_consumer_groups([group], request_timeout=10).values()
    try:
        described = future.result()
    except Exception:  # the group does not exist yet
        return 0
    return sum(1 for m in described.members if m.assignment and m.assignment.topic_partitions)


def ghost_processing(kafka: KafkaSettings, task_id: str, task_type: TaskType) -> None:
    """A worker that took the task and died: its PROCESSING, then nothing (as a Python worker
    writes it, through ``KafkaSettings.producer_config()``)."""
    producer = Producer(kafka.producer_config())
    event = StatusChanged(envelope=Envelope.new(task_id, task_type, source="worker"),
                          status=TaskStatus.PROCESSING, progress=0.0, worker_id="ghost")
    produce_event(producer, kafka.topics.status, event, codec=EventCodec())
    assert producer.flush(30) == 0


def records_of(kafka: KafkaSettings, topic: str) -> dict[str, list[tuple[int, bytes | None]]]:
    """``key -> [(partition, value)]`` of a topic, in offset order per partition."""
    out: dict[str, list[tuple[int, bytes | None]]] = defaultdict(list)
    for msg in read_all(kafka, topic):
        out[msg.key().decode()].append((msg.partition(), msg.value()))
    return out


def test_java_tasks_follow_the_contract_through_two_processors_and_real_workers(
        kafka_settings: KafkaSettings, tmp_path: Path, results_dir: Path, java_classpath: str,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    kafka = kafka_settings.model_copy(update={"partitions": PARTITIONS})
    ensure_topics(kafka)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.new("RGB", (64, 64), (120, 80, 200)).save(inputs / "look.png")
    image_url = (inputs / "look.png").resolve().as_uri()
    schemas = exported_schemas(tmp_path / "avsc")
    common = ["--bootstrap", kafka.bootstrap_servers, "--prefix", kafka.topic_prefix,
              "--schemas", str(schemas)]

    apps = []
    for name in ("p1", "p2"):
        (tmp_path / name).mkdir()
        app = App(kafka, tmp_path / name, lease_s=3.0, lease_check_interval_s=0.3,
                  retry_max_attempts=3, retry_backoff_base_s=0.3, retry_jitter=0.0)
        app.env["PROCESSORS_GROUP_INSTANCE_ID"] = f"conformance-{name}"
        apps.append(app)
    models = ModelCache(ModelRegistry(ModelProfile.OFFLINE, tmp_path_factory.getbasetemp() / "worker-models"))
    fetchers = [InputFetcher(InputSettings(allowed_file_roots=[inputs])) for _ in range(2)]
    workers: list[Running] = []
    status_log = None
    try:
        for app in apps:
            app.start()
        group, admin = ProcessorSettings().app_id_for(kafka.topic_prefix), AdminClient(kafka.client_config())
        wait_for(lambda: [a.check_alive() for a in apps] and processors_members(admin, group) == 2,
                 "both processors instances holding partitions", DEADLINE_S)
        workers.append(Running(Worker(kafka, worker_settings(kafka, types=WORKER_TYPES, retry_max_attempts=3),
                                      registry(WORKER_TYPES), FileStore(results_dir), fetchers[0], models)))

        produced = {line["case"]: line for line in java(java_classpath, "produce", *common, "--image-url", image_url)}
        assert set(produced) == {*COMPLETED_CASES, *REFUSED, "leased"}
        leased = produced["leased"]
        ghost_processing(kafka, leased["task_id"], TaskType.BACKGROUND_FIX)

        status_log = StatusLog(kafka, deadline_s=DEADLINE_S)

        def state(case: str) -> Any:
            return status_log.state(produced[case]["task_id"])

        status_log.wait(lambda log: all(state(c) and state(c).status is TaskStatus.COMPLETED for c in COMPLETED_CASES)
                        and all(state(c) and state(c).status is TaskStatus.FAILED for c in REFUSED),
                        "the Java tasks' outcomes", also=lambda: [a.check_alive() for a in apps])

        # The ghost's lease expires; the instance owning the task's partition resubmits it.
        fix_topic = kafka.topics.task(TaskType.BACKGROUND_FIX)

        def attempts() -> list[tuple[int, int]]:
            codec = EventCodec()
            out = []
            for msg in read_all(kafka, fix_topic):
                task = codec.decode(msg.value())
                assert isinstance(task, TaskSubmitted)
                out.append((task.envelope.attempt, msg.partition()))
            return out

        wait_for(lambda: [a.check_alive() for a in apps] and len(attempts()) >= 2,
                 "the leased task's retry record", DEADLINE_S)
        retried = attempts()
        assert [a for a, _ in retried[:2]] == [1, 2]  # the Java record, then the processors' retry
        assert {p for _, p in retried} == {leased["partition"]}  # on the partition Java chose
        workers.append(Running(Worker(kafka, worker_settings(kafka, types=[TaskType.BACKGROUND_FIX]),
                                      registry([TaskType.BACKGROUND_FIX]), FileStore(results_dir),
                                      fetchers[1], models)))
        status_log.wait(lambda log: state("leased").status is TaskStatus.COMPLETED and state("leased").attempt >= 2,
                        "the leased task completed by its retry")
        wait_for(lambda: all(latest_states(kafka).get(produced[c]["task_id"], {}).get("status") == "COMPLETED"
                             for c in [*COMPLETED_CASES, "leased"]), "the folded states", DEADLINE_S)
    finally:
        for running in workers:
            running.worker.stop()
        for running in workers:
            running.join()
        with ThreadPoolExecutor(len(apps)) as pool:  # each stop takes seconds: side by side
            list(pool.map(lambda a: a.stop(), apps))
        for fetcher in fetchers:
            fetcher.close()
        if status_log is not None:
            status_log.close()

    # --- the Java client's default partitioner is the system's --------------------------------
    for line in produced.values():
        assert line["partition"] == key_partition(line["key"].encode(), PARTITIONS), line
    for case in [*COMPLETED_CASES, "leased"]:
        assert produced[case]["java_fingerprint"] == avro_files.fingerprint(
            avro_files.parsed_schema(f"compute.events.{produced[case]['task_type'].title().replace('_', '')}TaskSubmitted")).hex()

    # --- the statuses, as the Java reader decodes them with the schema store's schemas ---------
    ids = {line["task_id"] for line in produced.values()}
    statuses = java(java_classpath, "read", *common, "--tasks", ",".join([*ids, produced["wrong_key"]["key"]]))
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in statuses:
        assert line["in_store"], f"no schema {line['fingerprint']} in the store for {line}"
        assert line["task_id"] == line["key"] and line["ce_id_matches"], line
        assert line["ce_type"] == "compute.events.StatusChanged"
        task_case = next(c for c, p in produced.items() if p["task_id"] == line["task_id"])
        # Every status on the partition murmur2 gives its key: for a task, the one the Java
        # client chose for the task (the wrong-key record's FAILED is keyed by its envelope).
        assert line["partition"] == key_partition(line["key"].encode(), PARTITIONS), line
        if task_case != "wrong_key":
            assert line["partition"] == produced[task_case]["partition"], line
        by_task[task_case].append(line)
    assert produced["wrong_key"]["key"] not in {line["key"] for line in statuses}  # reported by envelope id

    for case, needle in REFUSED.items():
        [failed] = by_task[case]  # the one status of a refused record
        assert (failed["status"], failed["error_code"], failed["attempt"]) == ("FAILED", "INVALID_INPUT", 1)
        assert needle in failed["error_message"], failed
        assert failed["trace_id"] == produced[case]["trace_id"]  # continues the record's trace
    assert produced["wrong_key"]["key"] in by_task["wrong_key"][0]["error_message"]
    assert produced["wrong_key"]["task_id"] in by_task["wrong_key"][0]["error_message"]

    for case in COMPLETED_CASES:
        lines = by_task[case]
        assert [s["status"] for s in lines][-1] == "COMPLETED" and lines[0]["status"] == "PROCESSING"
        want = produced[case]["trace_id"] or task_trace_id(produced[case]["task_id"])  # no headers: derived
        assert {s["trace_id"] for s in lines} == {want}, case
    assert "COMPLETED" in {s["status"] for s in by_task["leased"]}

    # --- the processors: folded on the task's partition, leased, removed from the changelog --
    states = records_of(kafka, kafka.topics.state)
    # The Faust table's changelog: keys as Faust serialises a str key (JSON text).
    submissions = {json.loads(k): v for k, v in records_of(
        kafka, f"{ProcessorSettings().app_id_for(kafka.topic_prefix)}-submissions-changelog").items()}
    for case in [*COMPLETED_CASES, "leased"]:
        task_id, partition = produced[case]["task_id"], produced[case]["partition"]
        assert {p for p, _ in states[task_id]} == {partition}, case
        entries = submissions.get(task_id, [])
        assert {p for p, _ in entries} <= {partition}, case
        assert not entries or entries[-1][1] is None, f"{case}: still in the submissions table"
    assert submissions[leased["task_id"]][0][1] is not None  # kept, then (above) removed
    for case in REFUSED:
        assert produced[case]["key"] not in submissions, f"{case}: a refused record was kept for retries"

    dlq = records_of(kafka, kafka.topics.dlq(kafka.topics.task(TaskType.IMAGE_ADJUSTER)))
    assert sorted(dlq) == sorted(produced[c]["key"] for c in REFUSED)  # one copy of each
