"""Cleanup of a workflow's outputs in an S3 results store (the real S3 endpoint of the tests):
only objects under the store's prefix, in the caller's tenant's folder of the workflow's own step
tasks, are deleted; anything else a result names is left and reported."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from api.workflow_outputs import cleanup_outputs
from gpu_consumers.storage import StorageSettings

pytestmark = pytest.mark.integration


def test_cleanup_deletes_the_tenants_step_objects_only(s3_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_config.env().items():  # boto3's credential chain, as the API's
        monkeypatch.setenv(name, value)
    client = s3_config.client()
    bucket = f"results-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    step_task, other_task = str(uuid.uuid4()), str(uuid.uuid4())
    keys = {
        "own": f"runs/acme/{step_task}/1/output.png",
        "another tenant's": f"runs/globex/{step_task}/1/output.png",
        "another task's": f"runs/acme/{other_task}/1/output.png",
        "outside the prefix": f"elsewhere/acme/{step_task}/1/output.png",
    }
    for key in keys.values():
        client.put_object(Bucket=bucket, Key=key, Body=b"png")
    urls = {what: f"s3://{bucket}/{key}" for what, key in keys.items()}
    steps = [{"step_id": "cutout", "task_id": step_task,
              "result": {"result_image_url": urls["own"],
                         "output_urls": [urls["own"], urls["another tenant's"], urls["outside the prefix"],
                                         f"s3://{bucket}/runs/acme/../globex/{step_task}/1/output.png"]}},
             {"step_id": "adjust", "task_id": step_task.replace(step_task[:8], "00000000"),
              "result": {"result_image_url": urls["another task's"]}},
             {"step_id": "pending", "task_id": None, "result": None}]
    settings = StorageSettings(results_url=f"s3://{bucket}/runs", s3_endpoint_url=s3_config.endpoint_url)

    deleted, refused = cleanup_outputs(settings, "acme", steps)

    assert deleted == [urls["own"]]
    assert {r["url"] for r in refused} == {urls["another tenant's"], urls["outside the prefix"],
                                            urls["another task's"],
                                            f"s3://{bucket}/runs/acme/../globex/{step_task}/1/output.png"}
    left = {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert left == set(keys.values()) - {keys["own"]}
    assert cleanup_outputs(settings, "acme", steps)[0] == [urls["own"]]  # repeatable
