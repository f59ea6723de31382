"""Bad input through a real worker: each case ends FAILED with the right code and a clear message.

The worker runs in a thread of the test process (burst mode, one task) with the real handler
registry, the real :class:`~gpu_consumers.inputs.InputFetcher` and an offline
:class:`~gpu_consumers.model_cache.ModelCache`; tasks go through the real broker. Every check
here happens before any model is loaded, so no model is built. Assertions are on the folded
status topic, the DLQ and the results folder.
"""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from fastavro import schemaless_writer
from PIL import Image

from gpu_consumers.handlers.handler_set import registry
from gpu_consumers.inputs import InputFetcher, InputSettings
from gpu_consumers.model_cache import ModelCache
from gpu_consumers.models import ModelProfile, ModelRegistry
from gpu_consumers.runtime import Worker, WorkerStats
from gpu_consumers.storage import UNTENANTED, FileStore
from producers.submit import TaskProducer, validate_params
from schemas import avro_files
from schemas.codec import EventCodec
from schemas.enums import ErrorCode, TaskStatus, TaskType
from schemas.events import TASK_SUBMITTED_MODELS, TaskSubmitted
from schemas.framing import single_object_prefix
from schemas.headers import header_dict
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics
from state.lifecycle import TaskState
from tests.gpu_consumers.runtime_helpers import Running, worker_settings
from tests.kafka_helpers import StatusLog, read_topic

pytestmark = pytest.mark.integration

TYPES = [TaskType.IMAGE_ADJUSTER, TaskType.EDITING, TaskType.DETAIL_ENHANCER]


@pytest.fixture
def kafka(kafka_settings: KafkaSettings) -> KafkaSettings:
    ensure_topics(kafka_settings)
    return kafka_settings


@pytest.fixture
def status_log(kafka: KafkaSettings):
    log = StatusLog(kafka)
    yield log
    log.close()


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    return folder


@pytest.fixture
def run_worker(kafka, inputs, results_dir, tmp_path_factory):
    """``run_worker(tasks=1, **input_settings)``: a worker for TYPES in a thread, until it has
    taken ``tasks`` records; returns its counters."""
    models = ModelCache(ModelRegistry(ModelProfile.OFFLINE,
                                      tmp_path_factory.getbasetemp() / "worker-models"))

    def run(tasks: int = 1, **input_settings: Any) -> WorkerStats:
        fetcher = InputFetcher(InputSettings(**{"allowed_file_roots": [inputs], **input_settings}))
        worker = Worker(kafka, worker_settings(kafka, types=TYPES, retry_max_attempts=3),
                        registry(TYPES), FileStore(results_dir), fetcher, models)
        try:
            return Running(worker, max_tasks=tasks).join()
        finally:
            fetcher.close()

    return run


def submit(kafka: KafkaSettings, task_type: TaskType, params: dict[str, Any]) -> str:
    with TaskProducer(kafka, source="bad-input-test") as producer:
        return producer.submit(task_type, params)


def image_url(folder: Path, name: str, size: tuple[int, int] = (64, 64)) -> str:
    path = folder / name
    Image.new("RGB", size, (120, 80, 200)).save(path)
    return path.resolve().as_uri()


def failed(status_log: StatusLog, task_id: str) -> TaskState:
    """The task's final state, after checking it FAILED once, at its first attempt, not retried."""
    status_log.wait_terminal(task_id)
    state = status_log.state(task_id)
    assert state.status is TaskStatus.FAILED, (state.status, state.error_message)
    [terminal] = status_log.terminals(task_id)
    assert (terminal.envelope.attempt, terminal.error.retryable) == (1, False)
    return state


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


# --------------------------------------------------------------------------- URLs


def test_an_unreachable_url_fails_with_invalid_input(kafka, status_log, run_worker, results_dir):
    url = f"http://127.0.0.1:{closed_port()}/look.png"
    task_id = submit(kafka, TaskType.IMAGE_ADJUSTER, {"base_image_url": url, "brightness": 0.1})

    # Private networks allowed: it is the connection itself that fails.
    stats = run_worker(allow_private_networks=True, timeout_s=2.0)

    assert stats.failed == 1 and stats.retried == 0
    state = failed(status_log, task_id)
    assert state.error_code is ErrorCode.INVALID_INPUT
    assert url in state.error_message and "unreachable" in state.error_message
    assert not (results_dir / UNTENANTED / task_id).exists()


@pytest.mark.parametrize("url, reason", [
    ("http://10.0.0.1/look.png", "private address 10.0.0.1"),
    ("http://127.0.0.1:9/look.png", "loopback address 127.0.0.1"),
    ("http://169.254.169.254/latest/meta-data", "link-local address 169.254.169.254"),
])
def test_a_private_address_is_refused_with_invalid_input(kafka, status_log, run_worker, url, reason):
    task_id = submit(kafka, TaskType.IMAGE_ADJUSTER, {"base_image_url": url, "contrast": 0.2})

    stats = run_worker()  # default settings: private networks are not allowed

    assert stats.failed == 1
    state = failed(status_log, task_id)
    assert state.error_code is ErrorCode.INVALID_INPUT
    message = state.error_message
    assert url.split("/")[2] in message and reason in message and "refused" in message
    assert "INPUT_ALLOW_PRIVATE_NETWORKS" in message  # says how to allow it


# --------------------------------------------------------------------------- images


def test_an_oversize_image_fails_with_invalid_input(kafka, status_log, run_worker, inputs):
    url = image_url(inputs, "huge.png", (200, 150))
    task_id = submit(kafka, TaskType.IMAGE_ADJUSTER, {"base_image_url": url, "warmth": 0.5})

    stats = run_worker(max_image_pixels=20_000)  # 200 x 150 = 30,000 pixels

    assert stats.failed == 1
    state = failed(status_log, task_id)
    assert state.error_code is ErrorCode.INVALID_INPUT
    message = state.error_message
    assert "huge.png" in message and "30000 pixels" in message and "20000" in message
    assert "INPUT_MAX_IMAGE_PIXELS" in message  # names the limit and its setting


def test_non_image_bytes_fail_with_invalid_input(kafka, status_log, run_worker, inputs):
    path = inputs / "notes.png"
    path.write_bytes(b"these are meeting notes, not a picture\n" * 10)
    task_id = submit(kafka, TaskType.IMAGE_ADJUSTER, {"base_image_url": path.as_uri(),
                                                       "saturation": 0.3})

    stats = run_worker()

    assert stats.failed == 1
    state = failed(status_log, task_id)
    assert state.error_code is ErrorCode.INVALID_INPUT
    assert "notes.png" in state.error_message and "not an image" in state.error_message


def test_a_mask_of_the_wrong_size_fails_with_invalid_input(kafka, status_log, run_worker, inputs,
                                                           results_dir):
    base = image_url(inputs, "base.png", (64, 64))
    mask_path = inputs / "mask.png"
    Image.new("L", (32, 48), 255).save(mask_path)
    task_id = submit(kafka, TaskType.EDITING, {"base_image_url": base, "mask_url": mask_path.as_uri(),
                                               "prompt": "a red scarf", "strength": 0.7})

    stats = run_worker()

    assert stats.failed == 1
    state = failed(status_log, task_id)
    assert state.error_code is ErrorCode.INVALID_INPUT
    assert "mask is 32x48, image is 64x64" in state.error_message
    assert not (results_dir / UNTENANTED / task_id).exists()


def test_a_subject_swap_whose_catalog_lora_is_unknown_fails_with_invalid_input(kafka, status_log, run_worker,
                                                                               inputs, results_dir):
    # The catalog entry the planner resolved names a LoRA this worker cannot find: checked before
    # any image is fetched or model loaded (gpu_consumers/handlers/editing.py).
    subject = {"id": "0b6f4d1e-8f7c-4f65-9a57-3c2b1d0e9f11", "name": "Nobody", "lora_ref": "clients/nobody",
               "lora_weight": 0.8}
    task_id = submit(kafka, TaskType.EDITING, {
        "base_image_url": image_url(inputs, "shot.png"), "prompt": "replace the person",
        "provider_config": {"tool": "SUBJECT_SWAP", "subject": subject}})

    stats = run_worker()

    assert stats.failed == 1
    state = failed(status_log, task_id)
    assert state.error_code is ErrorCode.INVALID_INPUT
    assert "subject: unknown LoRA reference 'clients/nobody'" in state.error_message
    assert not (results_dir / UNTENANTED / task_id).exists()


# --------------------------------------------------------------------------- parameters


def test_out_of_range_parameters_reaching_the_worker_fail_with_invalid_input(kafka, status_log,
                                                                             run_worker, inputs):
    """A producer that skipped validation (another language, an old client) wrote strength 1.5.
    The worker cannot turn the record into a valid task: it is dead-lettered with its error, and
    its task (the record key) is FAILED/INVALID_INPUT. The partition moves on."""
    task_type = TaskType.DETAIL_ENHANCER
    valid = validate_params(task_type, {"base_image_url": image_url(inputs, "d.png"), "strength": 0.5})
    record = TaskSubmitted.new(valid, source="foreign-producer").to_avro()
    record["params"]["strength"] = 1.5  # out of 0..1, written straight with fastavro
    schema = avro_files.parsed_schema(TASK_SUBMITTED_MODELS[task_type].avro_name)
    body = io.BytesIO()
    schemaless_writer(body, schema, record)
    value = single_object_prefix(avro_files.fingerprint(schema)) + body.getvalue()
    task_id = record["envelope"]["task_id"]
    topic = kafka.topics.task(task_type)
    producer = Producer(kafka.producer_config())
    producer.produce(topic, key=task_id, value=value)
    assert producer.flush(10) == 0
    good = submit(kafka, task_type, {"base_image_url": image_url(inputs, "e.png"), "strength": 0.5,
                                     "provider_type": "classical"})

    stats = run_worker(tasks=2)

    assert (stats.dead_lettered, stats.completed, stats.failed) == (1, 1, 0)
    state = failed(status_log, task_id)
    assert state.error_code is ErrorCode.INVALID_INPUT
    assert "strength" in state.error_message and "less than or equal to 1" in state.error_message
    [dead] = read_topic(kafka, kafka.topics.dlq(topic), expect=1)
    assert dead.key() == task_id.encode() and dead.value() == value
    headers = header_dict(dead.headers())
    assert headers["original.topic"] == topic and "strength" in headers["error.message"]
    status_log.wait_terminal(good)
    assert status_log.state(good).status is TaskStatus.COMPLETED


def test_a_record_of_the_wrong_type_on_a_task_topic_is_dead_lettered(kafka, status_log, run_worker,
                                                                     inputs):
    """A well-formed IMAGE_ADJUSTER task produced to the DETAIL_ENHANCER topic by mistake."""
    valid = validate_params(TaskType.IMAGE_ADJUSTER, {"base_image_url": image_url(inputs, "w.png")})
    event = TaskSubmitted.new(valid, source="confused-producer")
    topic = kafka.topics.task(TaskType.DETAIL_ENHANCER)
    producer = Producer(kafka.producer_config())
    producer.produce(topic, key=event.envelope.task_id, value=EventCodec().encode(event))
    assert producer.flush(10) == 0

    stats = run_worker()

    assert stats.dead_lettered == 1
    state = failed(status_log, event.envelope.task_id)
    assert state.error_code is ErrorCode.INVALID_INPUT
    assert "ImageAdjusterTaskSubmitted" in state.error_message and topic in state.error_message
