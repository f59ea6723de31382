"""Two tenants through a real worker on the real broker: tenant B names tenant A's output by
every URL form, its task ends FAILED / INVALID_INPUT with a message that tells nothing, and A's
task over its own output completes.

The worker runs in a thread of the test process (burst mode) with the real handler registry, the
real :class:`~gpu_consumers.inputs.InputFetcher` and a real store (a folder, or the S3 test
endpoint); tasks go in through :class:`~producers.submit.TaskProducer` stamped with a tenant, as
the API stamps them. Assertions are on the folded status topic and the stored objects.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gpu_consumers.handlers.handler_set import registry
from gpu_consumers.inputs import InputFetcher, InputSettings
from gpu_consumers.runtime import Worker
from gpu_consumers.storage import FileStore, S3Store, file_url_path
from producers.task_ids import task_id_for
from schemas.enums import ErrorCode, TaskStatus, TaskType
from schemas.kafka_settings import KafkaSettings
from tests.gpu_consumers.runtime_helpers import Running, worker_settings
from tests.gpu_consumers.test_worker_bad_input import kafka, status_log  # noqa: F401 (fixtures)
from tests.kafka_helpers import StatusLog
from tests.security.helpers import TENANT_A, TENANT_B, assert_generic_refusal, submit_as

pytestmark = pytest.mark.integration

TYPE = TaskType.IMAGE_ADJUSTER
KEY_OF_A = "order-17"  # the Idempotency-Key tenant A used, which tenant B has learnt


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """The one folder file:// inputs may come from (INPUT_ALLOWED_FILE_ROOTS)."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.new("RGB", (64, 64), (120, 80, 200)).save(folder / "look.png")
    return folder


def run_worker(kafka: KafkaSettings, store: Any, tasks: int, **settings: Any) -> None:
    fetcher = InputFetcher(InputSettings(**settings))
    worker = Worker(kafka, worker_settings(kafka, types=[TYPE], retry_max_attempts=3),
                    registry([TYPE]), store, fetcher, None)
    try:
        stats = Running(worker, max_tasks=tasks).join()
    finally:
        fetcher.close()
    assert stats.handled == tasks


def adjust(url: str) -> dict[str, Any]:
    return {"base_image_url": url, "brightness": 0.1}


def completed_output(status_log: StatusLog, task_id: str) -> str:
    status_log.wait_terminal(task_id)
    state = status_log.state(task_id)
    assert state.status is TaskStatus.COMPLETED, (state.status, state.error_message)
    return state.result.output_urls[0]


def refused(status_log: StatusLog, task_id: str, url: str, *secrets: str) -> None:
    status_log.wait_terminal(task_id)
    state = status_log.state(task_id)
    assert (state.status, state.error_code) == (TaskStatus.FAILED, ErrorCode.INVALID_INPUT), \
        (url, state.status, state.error_message)
    assert_generic_refusal(state.error_message, url, *secrets)


def test_tenant_b_cannot_read_tenant_as_output_from_the_results_folder(
        kafka: KafkaSettings, status_log: StatusLog, results_dir: Path, results_url: str,
        inputs: Path) -> None:
    store, root = FileStore(results_dir), results_dir.resolve()
    (inputs / "a-output.png").symlink_to(root / TENANT_A)  # a link planted in the input folder
    settings = {"results_url": results_url, "allowed_file_roots": [inputs]}
    first = submit_as(kafka, TENANT_A, TYPE, adjust((inputs / "look.png").as_uri()),
                      idempotency_key=KEY_OF_A)
    run_worker(kafka, store, 1, **settings)
    url_a = completed_output(status_log, first)
    path_a = file_url_path(url_a)
    assert path_a.is_relative_to(root / TENANT_A) and path_a.is_file()
    relative = path_a.relative_to(root / TENANT_A)  # <task id>/1/output.png

    predicted = task_id_for(KEY_OF_A, TENANT_A)  # no IDEMPOTENCY_SECRET here: B can compute it
    assert predicted == first
    hostile = [
        url_a,
        f"file://localhost{path_a}",
        f"file://{root}/{TENANT_B}/../{TENANT_A}/{relative}",
        f"file://{root}/{TENANT_B}/%2e%2e/{TENANT_A}/{relative}",
        f"file://{root}/{TENANT_B}/%252e%252e/{TENANT_A}/{relative}",
        f"file://{root}//{TENANT_A}//{relative}",
        f"file:///proc/self/root{path_a}",
        f"{(inputs / 'a-output.png').as_uri()}/{relative}",
        f"file://{root}/{TENANT_A}/{predicted}/1/output.png",
        f"file://{root}/{TENANT_B}/{predicted}/1/output.png",  # the predicted id, B's own folder
    ]
    b_tasks = {submit_as(kafka, TENANT_B, TYPE, adjust(url)): url for url in hostile}
    own = submit_as(kafka, TENANT_A, TYPE, adjust(url_a))  # A may chain its own output
    run_worker(kafka, store, len(b_tasks) + 1, **settings)

    size = str(path_a.stat().st_size)
    for task_id, url in b_tasks.items():
        refused(status_log, task_id, url, str(root), size, first)
    assert file_url_path(completed_output(status_log, own)).is_relative_to(root / TENANT_A)
    # Nothing of B's refused tasks was stored, and B's folder holds no copy of A's image.
    assert not (root / TENANT_B).exists()


def test_tenant_b_cannot_read_tenant_as_output_from_the_results_bucket(
        kafka: KafkaSettings, status_log: StatusLog, s3_config: Any, inputs: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_config.env().items():
        monkeypatch.setenv(name, value)  # the fetcher's own S3 client reads the usual variables
    client, bucket = s3_config.client(), f"results-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    store = S3Store(bucket, "results", client)
    settings = {"results_url": f"s3://{bucket}/results", "s3_endpoint_url": s3_config.endpoint_url,
                "allowed_file_roots": [inputs], "allowed_s3_prefixes": [bucket]}
    first = submit_as(kafka, TENANT_A, TYPE, adjust((inputs / "look.png").as_uri()))
    run_worker(kafka, store, 1, **settings)
    url_a = completed_output(status_log, first)
    key = url_a.removeprefix(f"s3://{bucket}/")
    assert key.startswith(f"results/{TENANT_A}/{first}/")
    relative = key.removeprefix(f"results/{TENANT_A}/")
    endpoint = s3_config.endpoint_url.rstrip("/")

    hostile = [
        url_a,
        f"s3://{bucket.upper()}/{key}",
        f"s3://{bucket}/results/{TENANT_B}/../{TENANT_A}/{relative}",
        f"s3://{bucket}/results/{TENANT_B}/%2e%2e/{TENANT_A}/{relative}",
        f"s3://{bucket}//results/{TENANT_A}/{relative}",
        f"{endpoint}/{bucket}/{key}",  # the object's URL on the S3 endpoint, path-style
        f"{endpoint}/{bucket}/results/{TENANT_B}/%2e%2e/{TENANT_A}/{relative}",
    ]
    b_tasks = {submit_as(kafka, TENANT_B, TYPE, adjust(url)): url for url in hostile}
    own = submit_as(kafka, TENANT_A, TYPE, adjust(url_a))
    run_worker(kafka, store, len(b_tasks) + 1, **settings)

    size = str(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
    for task_id, url in b_tasks.items():
        refused(status_log, task_id, url, "results/", size, first)
    assert completed_output(status_log, own).startswith(f"s3://{bucket}/results/{TENANT_A}/")
    stored = client.list_objects_v2(Bucket=bucket, Prefix=f"results/{TENANT_B}/").get("KeyCount")
    assert stored == 0
