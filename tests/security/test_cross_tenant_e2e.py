"""End to end: a ``computectl worker`` process, configured only through its environment as an
operator starts one, serves two tenants; tenant B's IMAGE_ADJUSTER over tenant A's output ends
FAILED / INVALID_INPUT, and tenant A's over the same output completes.

The worker processes and the status log come from tests/gpu_consumers/test_worker_e2e.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpu_consumers.storage import file_url_path
from schemas.enums import ErrorCode, TaskStatus, TaskType
from schemas.kafka_settings import KafkaSettings
from tests.gpu_consumers.test_worker_e2e import Inputs, inputs, kafka, statuses, workers  # noqa: F401
from tests.kafka_helpers import StatusLog
from tests.security.helpers import TENANT_A, TENANT_B, assert_generic_refusal, submit_as

pytestmark = pytest.mark.integration


@pytest.fixture
def model_cache_dir(tmp_path: Path) -> Path:
    """IMAGE_ADJUSTER loads no model: the worker needs no model folder built."""
    return tmp_path / "no-models"


def test_a_worker_process_refuses_tenant_bs_task_over_tenant_as_output(
        kafka: KafkaSettings, statuses: StatusLog, workers, inputs: Inputs,  # noqa: F811
        results_dir: Path) -> None:
    worker = workers("image-adjuster", "--burst", "--max-tasks", "3", "--idle-timeout", "60")
    first = submit_as(kafka, TENANT_A, TaskType.IMAGE_ADJUSTER,
                      {"base_image_url": inputs.image("look.png"), "brightness": 0.1})
    statuses.wait_terminal(first, also=worker.check_alive)
    state = statuses.state(first)
    assert state.status is TaskStatus.COMPLETED, state.error_message
    url_a = state.result.output_urls[0]
    assert file_url_path(url_a).is_relative_to(results_dir.resolve() / TENANT_A)

    stolen = submit_as(kafka, TENANT_B, TaskType.IMAGE_ADJUSTER, {"base_image_url": url_a, "contrast": 0.2})
    chained = submit_as(kafka, TENANT_A, TaskType.IMAGE_ADJUSTER, {"base_image_url": url_a, "contrast": 0.2})
    statuses.wait_terminal(stolen, chained, also=worker.check_not_failed)
    summary = worker.finish()

    refused = statuses.state(stolen)
    assert (refused.status, refused.error_code) == (TaskStatus.FAILED, ErrorCode.INVALID_INPUT)
    assert_generic_refusal(refused.error_message, url_a, str(results_dir.resolve()), first,
                           str(file_url_path(url_a).stat().st_size))
    own = statuses.state(chained)
    assert own.status is TaskStatus.COMPLETED, own.error_message
    assert file_url_path(own.result.output_urls[0]).is_relative_to(results_dir.resolve() / TENANT_A)
    assert not (results_dir / TENANT_B).exists()
    assert (summary["completed"], summary["failed"]) == (2, 1)
