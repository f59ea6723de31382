"""End to end on the real broker: ``computectl worker`` processes, the producer, S3 and file://.

Every worker here is a real process (``computectl worker``) started the way an operator starts
one, configured only through its environment: the test's topic prefix, the offline model profile
with one model folder shared by the session (the tiny models are built once, up front), inputs
from a folder of images the test writes, outputs to the S3 test endpoint or a ``file://`` folder.
Tasks go in through :class:`~producers.submit.TaskProducer`.

Assertions are on the status topic folded with ``state.lifecycle.fold_all``, on the stored result
files or objects, on the workers' ``--json`` counters, the DLQ and committed offsets; never on
log text. Waits are conditions with deadlines. Every process started is killed in a finalizer.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from PIL import Image

from gpu_consumers.storage import UNTENANTED
from producers.submit import TaskProducer
from schemas.codec import EventCodec
from schemas.emit import produce_event
from schemas.enums import ErrorCode, TaskStatus, TaskType
from schemas.events import CancelRequested, Envelope
from schemas.headers import header_dict
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics, watermarks
from tests.kafka_helpers import StatusLog, committed_total, read_topic, wait_for

pytestmark = pytest.mark.integration

# Generous: a worker process imports torch and diffusers and loads its models on a shared CPU.
DEADLINE_S = 180.0
# A denoising step of the tiny text-to-image model at 128x128 takes ~0.3 s on one CPU thread, so
# this many steps keep a task running for tens of seconds: long enough to cancel, time out or
# kill it while it runs.
LONG_STEPS = 150
# The kill test's task: long enough to be killed mid-way, short enough to be re-run.
KILL_STEPS = 30
WORKER_COMMAND = [sys.executable, "-c", "from cli.main import main; main()", "worker"]
# Environment variables of the test process that must not leak into a worker's configuration.
_OWN_PREFIXES = ("KAFKA_", "WORKER_", "INPUT_", "COMPUTE_MODEL_", "S3_", "AWS_", "RESULTS_URL",
                 "SCHEMA_REGISTRY_URL")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One offline model folder for every worker of the session, built once (in a subprocess,
    so this process does not import torch), so no worker's time limit is spent building."""
    folder = tmp_path_factory.getbasetemp() / "worker-models"
    script = ("import sys; from gpu_consumers.models import ModelRegistry; "
              "ModelRegistry('offline', sys.argv[1]).prepare()")
    env = {**_clean_env(), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(folder)], env=env,
                          capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


@pytest.fixture
def kafka(kafka_settings: KafkaSettings) -> KafkaSettings:
    ensure_topics(kafka_settings)
    return kafka_settings


@pytest.fixture
def statuses(kafka: KafkaSettings) -> Iterator[StatusLog]:
    topic = StatusLog(kafka, DEADLINE_S)
    yield topic
    topic.close()


@pytest.fixture
def inputs(tmp_path: Path) -> Inputs:
    return Inputs(tmp_path / "inputs")


@pytest.fixture
def workers(kafka: KafkaSettings, model_cache_dir: Path, inputs: Inputs, tmp_path: Path,
            results_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    """``start(types, *args, results_url=..., env=...)`` launches ``computectl worker``; every
    process still running at the end of the test is killed."""
    started: list[WorkerProcess] = []

    def start(types: str, *args: str, results: str = results_url,
              env: dict[str, str] | None = None) -> WorkerProcess:
        name = f"worker-{len(started)}"
        environment = {
            **_clean_env(),
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
            "KAFKA_PARTITIONS": str(kafka.partitions),
            "WORKER_GROUP_PREFIX": f"{kafka.topic_prefix}-workers",
            "WORKER_DEVICE": "cpu",
            "WORKER_RETRY_BACKOFF_BASE_S": "0.1",
            "RESULTS_URL": results,
            "COMPUTE_MODEL_PROFILE": "offline",
            "COMPUTE_MODEL_CACHE_DIR": str(model_cache_dir),
            "INPUT_ALLOWED_FILE_ROOTS": str(inputs.folder),
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen([*WORKER_COMMAND, "--types", types, "--json", *args],
                                    env=environment, stdout=stdout, stderr=stderr,
                                    stdin=subprocess.DEVNULL)
        worker = WorkerProcess(name, proc, out, err)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
        worker.proc.wait(30)


# --------------------------------------------------------------------------- helpers


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}


@dataclass
class WorkerProcess:
    name: str
    proc: subprocess.Popen
    out: Path
    err: Path

    def logs(self) -> str:
        return self.err.read_text(errors="replace")[-4000:]

    def check_alive(self) -> None:
        """For a worker that must keep running."""
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.logs()}")

    def check_not_failed(self) -> None:
        """For a burst worker: it may have stopped, but not with an error."""
        if self.proc.poll() not in (None, 0):
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.logs()}")

    def finish(self, timeout_s: float = DEADLINE_S) -> dict[str, Any]:
        """Wait for a clean exit; return the ``--json`` counters."""
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout_s:.0f}s:\n{self.logs()}") from None
        assert code == 0, f"{self.name} exited with {code}:\n{self.logs()}"
        lines = self.out.read_text().strip().splitlines()
        assert lines, f"{self.name} printed no summary:\n{self.logs()}"
        return json.loads(lines[-1])

    def stop(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """SIGTERM (what a supervisor sends), then the counters of the clean stop."""
        self.proc.send_signal(signal.SIGTERM)
        return self.finish(timeout_s)


class Inputs:
    """Input images written by the test, served to workers as file:// URLs."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder

    def image(self, name: str, size: tuple[int, int] = (64, 64), seed: int = 0) -> str:
        width, height = size
        rng = np.random.default_rng(seed)
        pixels = np.full((height, width, 3), 232, np.uint8)
        pixels += rng.integers(0, 8, pixels.shape, dtype=np.uint8)
        pixels[height // 4: 3 * height // 4, 3 * width // 8: 5 * width // 8] = (180, 30, 40)
        return self.save(name, Image.fromarray(pixels))

    def mask(self, name: str, size: tuple[int, int] = (64, 64)) -> str:
        pixels = np.zeros((size[1], size[0]), np.uint8)
        pixels[size[1] // 4: 3 * size[1] // 4, size[0] // 4: 3 * size[0] // 4] = 255
        return self.save(name, Image.fromarray(pixels, mode="L"))

    def save(self, name: str, image: Image.Image) -> str:
        path = self.folder / name
        image.save(path)
        return path.resolve().as_uri()

    def pixels(self, url: str) -> np.ndarray:
        return np.asarray(Image.open(url.removeprefix("file://")).convert("RGB"))


def submit(kafka: KafkaSettings, *tasks: tuple[TaskType, dict[str, Any]]) -> list[str]:
    with TaskProducer(kafka, source="e2e-test") as producer:
        return [producer.submit(task_type, params) for task_type, params in tasks]


def request_cancel(kafka: KafkaSettings, task_id: str, task_type: TaskType) -> None:
    """What the REST API's cancel does: a CancelRequested on the control topic."""
    producer = Producer(kafka.producer_config())
    event = CancelRequested(envelope=Envelope.new(task_id, task_type, source="e2e-test"),
                            reason="the test cancels it", requested_by="e2e-test")
    produce_event(producer, kafka.topics.control, event, codec=EventCodec())
    assert producer.flush(10) == 0


def committed(kafka: KafkaSettings, task_type: TaskType) -> int:
    """Sum of the committed offsets of the worker group of ``task_type``."""
    return committed_total(kafka, kafka.topics.task(task_type), f"{kafka.topic_prefix}-workers.{task_type.slug}")


def records_per_partition(kafka: KafkaSettings, task_type: TaskType) -> list[int]:
    topic = kafka.topics.task(task_type)
    consumer = Consumer({**kafka.client_config(), "group.id": f"e2e-count-{uuid.uuid4().hex}"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return [watermarks(consumer, TopicPartition(topic, p))[1] for p in sorted(parts)]
    finally:
        consumer.close()


def group_members(kafka: KafkaSettings, task_type: TaskType) -> list[list[int]]:
    """The partitions each member of a type's worker group owns (after a stable rebalance)."""
    group = f"{kafka.topic_prefix}-workers.{task_type.slug}"
    admin = AdminClient(kafka.client_config())
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    if description.state.name != "STABLE":
        return []
    return [sorted(tp.partition for tp in m.assignment.topic_partitions)
            for m in description.members]


def read_output(url: str, s3: Any) -> bytes:
    if url.startswith("s3://"):
        bucket, _, key = url.removeprefix("s3://").partition("/")
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert url.startswith("file://"), url
    return Path(url.removeprefix("file://")).read_bytes()


def task_files(results_dir: Path, task_id: str) -> list[Path]:
    return sorted(p for p in (results_dir / UNTENANTED / task_id).rglob("*") if p.is_file())


# --------------------------------------------------------------------------- (a) the types


def _mixed_tasks(inputs: Inputs) -> dict[TaskType, dict[str, Any]]:
    subject = inputs.image("subject.png", (64, 64))
    return {
        TaskType.GENERATION: {"prompt": "a blue summer dress, studio light", "width": 64,
                              "height": 96, "seed": 7},
        TaskType.EDITING: {"base_image_url": subject, "mask_url": inputs.mask("mask.png"),
                           "prompt": "a green jacket", "strength": 0.9,
                           "provider_config": {"seed": 5}},
        TaskType.REFINE: {"base_image_url": subject, "upscale_factor": 2.0},
        TaskType.VIDEO_GENERATION: {"base_image_url": subject, "fps": 4, "duration": 1.0,
                                    "seed": 3},
        TaskType.BACKGROUND_REMOVE: {"image_url": subject, "output_format": "webp"},
        TaskType.IMAGE_ADJUSTER: {"base_image_url": subject, "brightness": 0.2},
        TaskType.DETAIL_ENHANCER: {"base_image_url": subject, "strength": 0.4,
                                   "provider_config": {"seed": 11}},
        TaskType.LLM_INTERACTION: {"prompt": "Write a caption for a blue dress.",
                                   "system_prompt": "You are a copywriter.", "max_tokens": 8,
                                   "temperature": 0.0},
    }


# What each output must be: (width, height, PIL mode) of images; frames of the video.
_EXPECTED_IMAGES = {
    TaskType.GENERATION: (64, 96, "RGB"),
    TaskType.EDITING: (64, 64, "RGB"),
    TaskType.REFINE: (128, 128, "RGB"),
    TaskType.BACKGROUND_REMOVE: (64, 64, "RGBA"),
    TaskType.IMAGE_ADJUSTER: (64, 64, "RGB"),
    TaskType.DETAIL_ENHANCER: (64, 64, "RGB"),
}


@pytest.mark.parametrize("where", ["s3", "file"])
def test_tasks_of_eight_types_complete_with_their_results_stored(
        where, kafka, statuses, workers, inputs, s3_config, results_dir, tmp_path):
    s3 = s3_config.client()
    if where == "s3":
        bucket = f"e2e-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=bucket)
        results = f"s3://{bucket}/results"
    else:
        results = results_dir.resolve().as_uri()
    tasks = _mixed_tasks(inputs)
    ids = dict(zip(tasks, submit(kafka, *tasks.items())))
    types = ",".join(t.slug for t in tasks)

    worker = workers(types, "--burst", "--max-tasks", str(len(tasks)), "--idle-timeout", "60",
                     results=results, env=s3_config.env())
    statuses.wait_terminal(*ids.values(), also=worker.check_not_failed)
    summary = worker.finish()

    assert (summary["handled"], summary["completed"], summary["failed"]) == (len(tasks), len(tasks), 0)
    for task_type, task_id in ids.items():
        state = statuses.state(task_id)
        assert state.status is TaskStatus.COMPLETED, (task_type, state.error_code, state.error_message)
        assert statuses.terminals_per_attempt(task_id) == Counter({1: 1})
        assert {e.worker_id for e in statuses.events[task_id] if e.envelope.source == "worker"} == {
            summary["worker_id"]}
        result, meta = state.result, state.result.metadata
        assert result.output_urls and all(u.startswith(f"{where}://") for u in result.output_urls)
        assert meta.timing_ms >= 0 and meta.model and meta.provider
        data = read_output(result.output_urls[0], s3)
        if task_type in _EXPECTED_IMAGES:
            width, height, mode = _EXPECTED_IMAGES[task_type]
            image = Image.open(io.BytesIO(data))
            image.load()
            assert (image.size, image.mode) == ((width, height), mode), task_type
            assert (meta.width, meta.height) == (width, height)
            assert result.result_image_url == result.output_urls[0]
            assert meta.content_type == Image.MIME[image.format]
        committed_total = committed(kafka, task_type)
        assert committed_total == 1, (task_type, committed_total)

    generation = statuses.state(ids[TaskType.GENERATION]).result
    assert generation.seed == 7 and generation.metadata.provider == "diffusers"
    assert statuses.state(ids[TaskType.BACKGROUND_REMOVE]).result.metadata.content_type == "image/webp"
    # IMAGE_ADJUSTER is exact pixel math: brightness +0.2 is x * 1.2, clipped, rounded once.
    adjusted = np.asarray(Image.open(io.BytesIO(read_output(
        statuses.state(ids[TaskType.IMAGE_ADJUSTER]).result.output_urls[0], s3))).convert("RGB"))
    source = inputs.pixels(tasks[TaskType.IMAGE_ADJUSTER]["base_image_url"])
    x = np.clip(source.astype(np.float32) / np.float32(255.0) * np.float32(1.2), 0.0, 1.0)
    assert np.array_equal(adjusted, np.rint(x * np.float32(255.0)).astype(np.uint8))
    # The video: an MP4 with fps * duration frames.
    video = statuses.state(ids[TaskType.VIDEO_GENERATION]).result
    assert video.result_video_url == video.output_urls[0]
    assert (video.metadata.content_type, video.metadata.fps, video.metadata.frame_count) == (
        "video/mp4", 4, 4)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(read_output(video.result_video_url, s3))
    import cv2

    capture = cv2.VideoCapture(str(clip))
    try:
        frames = 0
        while capture.read()[0]:
            frames += 1
    finally:
        capture.release()
    assert frames == 4
    # The LLM's answer is the result text, and it is stored as a text file too.
    answer = statuses.state(ids[TaskType.LLM_INTERACTION]).result
    assert isinstance(answer.result_text, str) and answer.metadata.provider == "transformers"
    assert read_output(answer.output_urls[0], s3).decode() == answer.result_text
    if where == "file":
        assert all(task_files(results_dir, t) for t in ids.values())


# --------------------------------------------------------------------------- (b) sharing


def test_two_worker_processes_in_one_group_share_a_types_partitions(kafka, statuses, workers,
                                                                    inputs, results_dir):
    task_type = TaskType.IMAGE_ADJUSTER
    first, second = workers(task_type.slug), workers(task_type.slug)

    def both_alive() -> None:
        first.check_alive()
        second.check_alive()

    def shared() -> bool:
        members = group_members(kafka, task_type)
        return len(members) == 2 and all(members)

    wait_for(shared, "both workers to own a partition of the group", DEADLINE_S, also=both_alive)
    image = inputs.image("shared.png", (48, 40))
    task_ids: list[str] = []
    # Random task ids spread over both partitions; keep submitting until each holds some.
    while len(task_ids) < 8 or min(records_per_partition(kafka, task_type)) < 2:
        task_ids += submit(kafka, *[(task_type, {"base_image_url": image, "contrast": 0.3})] * 4)
        assert len(task_ids) < 64, "the partitioner put every task on one partition"
    statuses.wait_terminal(*task_ids, also=both_alive)
    summaries = [first.stop(), second.stop()]

    assert all(s["handled"] > 0 and s["completed"] == s["handled"] for s in summaries), summaries
    assert sum(s["completed"] for s in summaries) == len(task_ids)
    assert all(s["healthy"] for s in summaries)
    finishers = {statuses.terminals(t)[0].worker_id for t in task_ids}
    assert finishers == {s["worker_id"] for s in summaries}
    assert all(statuses.state(t).status is TaskStatus.COMPLETED for t in task_ids)
    assert all(statuses.terminals_per_attempt(t) == Counter({1: 1}) for t in task_ids)
    assert committed(kafka, task_type) == len(task_ids)
    assert all(task_files(results_dir, t) for t in task_ids)


# --------------------------------------------------------------------------- (c) cancel


def test_a_running_task_is_cancelled(kafka, statuses, workers, results_dir):
    [task_id] = submit(kafka, (TaskType.GENERATION, {
        "prompt": "a long job", "width": 128, "height": 128, "seed": 1,
        "provider_config": {"num_inference_steps": LONG_STEPS}}))
    worker = workers("generation", "--burst", "--max-tasks", "1", "--idle-timeout", "60")

    statuses.wait_running(task_id, also=worker.check_alive)
    request_cancel(kafka, task_id, TaskType.GENERATION)
    statuses.wait_terminal(task_id)
    summary = worker.finish()

    state = statuses.state(task_id)
    assert (state.status, state.attempt) == (TaskStatus.CANCELLED, 1)
    [terminal] = statuses.terminals(task_id)
    assert terminal.worker_id == summary["worker_id"]
    progress = [e.progress for e in statuses.events[task_id] if e.status is TaskStatus.PROCESSING]
    assert 0 < max(progress) < 1  # stopped part of the way through its denoising steps
    assert (summary["cancelled"], summary["completed"], summary["failed"]) == (1, 0, 0)
    assert task_files(results_dir, task_id) == []  # nothing stored
    assert committed(kafka, TaskType.GENERATION) == 1


# --------------------------------------------------------------------------- (d) time limit


def test_a_task_past_its_time_limit_fails_with_provider_timeout(kafka, statuses, workers,
                                                                 results_dir):
    [task_id] = submit(kafka, (TaskType.GENERATION, {
        "prompt": "too slow", "width": 128, "height": 128, "seed": 2,
        "provider_config": {"num_inference_steps": LONG_STEPS}}))
    worker = workers("generation", "--burst", "--max-tasks", "1", "--idle-timeout", "60", env={
        "WORKER_TASK_TIMEOUT_S": "3", "WORKER_RETRY_MAX_ATTEMPTS": "2",
        "WORKER_TIMEOUT_GRACE_S": "60"})

    statuses.wait(lambda log: (s := log.state(task_id)) is not None and s.is_terminal,
                  "the task's terminal status", also=worker.check_not_failed)
    summary = worker.finish()

    state = statuses.state(task_id)
    assert (state.status, state.error_code, state.attempt) == (
        TaskStatus.FAILED, ErrorCode.PROVIDER_TIMEOUT, 2)
    assert "3s time limit" in state.error_message and "GENERATION" in state.error_message
    failed = [e for e in statuses.events[task_id] if e.status is TaskStatus.FAILED]
    assert [(e.envelope.attempt, e.error.code, e.error.retryable) for e in failed] == [
        (2, ErrorCode.PROVIDER_TIMEOUT, False)]  # FAILED once, at the end (issue 17)
    waits = [e for e in statuses.events[task_id] if e.status is TaskStatus.QUEUED and e.error]
    assert [(e.envelope.attempt, e.error.code, e.error.retryable) for e in waits] == [
        (2, ErrorCode.PROVIDER_TIMEOUT, True)]
    assert statuses.terminals_per_attempt(task_id) == Counter({2: 1})
    assert (summary["failed"], summary["retried"], summary["healthy"]) == (1, 1, True)
    assert task_files(results_dir, task_id) == []
    assert committed(kafka, TaskType.GENERATION) == 1


# --------------------------------------------------------------------------- (e) poison


def test_a_poison_record_lands_in_the_dlq_and_the_next_task_completes(kafka, statuses, workers,
                                                                      inputs):
    task_type = TaskType.IMAGE_ADJUSTER
    topic = kafka.topics.task(task_type)
    poison_id = str(uuid.uuid4())
    producer = Producer(kafka.producer_config())
    producer.produce(topic, key=poison_id, value=os.urandom(200), headers=[("origin", b"e2e")])
    assert producer.flush(10) == 0
    [good] = submit(kafka, (task_type, {"base_image_url": inputs.image("next.png"),
                                        "saturation": -0.5}))

    worker = workers(task_type.slug, "--burst", "--max-tasks", "2", "--idle-timeout", "60")
    statuses.wait_terminal(poison_id, good, also=worker.check_not_failed)
    summary = worker.finish()

    assert (summary["dead_lettered"], summary["completed"], summary["handled"]) == (1, 1, 2)
    [dead] = read_topic(kafka, kafka.topics.dlq(topic), expect=1)
    headers = header_dict(dead.headers())
    assert dead.key() == poison_id.encode() and headers["origin"] == "e2e"
    assert headers["original.topic"] == topic and headers["error.class"] and headers["error.message"]
    poison = statuses.state(poison_id)
    assert (poison.status, poison.error_code) == (TaskStatus.FAILED, ErrorCode.INVALID_INPUT)
    assert "could not be read" in poison.error_message
    assert statuses.state(good).status is TaskStatus.COMPLETED
    assert committed(kafka, task_type) == 2


# --------------------------------------------------------------------------- (f) crash


def test_a_killed_workers_task_is_finished_by_another_with_one_terminal_status(
        kafka, statuses, workers, results_dir):
    # A short session timeout, so the group notices the killed member within seconds.
    fast_failover = {"KAFKA_CLIENT_EXTRA": json.dumps(
        {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"})}
    [task_id] = submit(kafka, (TaskType.GENERATION, {
        "prompt": "survives a crash", "width": 128, "height": 128, "seed": 3,
        "provider_config": {"num_inference_steps": KILL_STEPS}}))
    doomed = workers("generation", env=fast_failover)

    statuses.wait_running(task_id, also=doomed.check_alive)
    doomed.proc.send_signal(signal.SIGKILL)  # mid-task: no terminal status, no commit
    assert doomed.proc.wait(30) == -signal.SIGKILL
    assert statuses.terminals(task_id) == [] and committed(kafka, TaskType.GENERATION) == 0

    rescuer = workers("generation", "--burst", "--max-tasks", "1", "--idle-timeout", "60",
                      env=fast_failover)
    statuses.wait_terminal(task_id, also=rescuer.check_not_failed)
    summary = rescuer.finish()

    state = statuses.state(task_id)
    assert (state.status, state.attempt) == (TaskStatus.COMPLETED, 1)
    assert statuses.terminals_per_attempt(task_id) == Counter({1: 1})  # exactly one terminal
    [terminal] = statuses.terminals(task_id)
    assert terminal.worker_id == summary["worker_id"]
    runners = {e.worker_id for e in statuses.events[task_id] if e.status is TaskStatus.PROCESSING}
    assert len(runners) == 2 and summary["worker_id"] in runners  # the killed one, then the rescuer
    assert summary["completed"] == 1
    [stored] = task_files(results_dir, task_id)
    assert Image.open(stored).size == (128, 128)
    assert committed(kafka, TaskType.GENERATION) == 1
