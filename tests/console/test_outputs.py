"""The console serves result bytes only from the results store it is configured with: a
``file://`` root or an ``s3://`` bucket/prefix (the S3 endpoint of the test stack); a stored URL
anywhere else is refused, not followed."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from api.console.auth import SessionStore
from api.console.data import (
    ConsoleSettings,
    OutputRefused,
    read_output,
    result_urls,
)
from projection.db.apikeys import Caller
from tests.gpu_consumers.runtime_helpers import PNG


def test_file_outputs_below_the_root_only(tmp_path: Path) -> None:
    root, outside = tmp_path / "results", tmp_path / "elsewhere.png"
    (root / "t1" / "task" / "1").mkdir(parents=True)
    inside = root / "t1" / "task" / "1" / "out.png"
    inside.write_bytes(PNG)
    outside.write_bytes(PNG)
    settings = ConsoleSettings(results_url=root.as_uri())
    got = read_output(settings, inside.as_uri())
    assert got.path == inside.resolve() and got.media_type == "image/png"
    for url in (outside.as_uri(), f"{root.as_uri()}/t1/../../elsewhere.png",
                f"{root.as_uri()}/missing.png", "s3://bucket/t1/out.png", "https://example.com/a.png"):
        with pytest.raises(OutputRefused):
            read_output(settings, url)


def test_s3_outputs_below_the_prefix_only(s3_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_config.env().items():
        monkeypatch.setenv(name, value)
    bucket = f"console-{uuid.uuid4().hex[:8]}"
    client = s3_config.client()
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="results/t1/task/1/out.png", Body=PNG, ContentType="image/png")
    client.put_object(Bucket=bucket, Key="other/out.png", Body=PNG)
    settings = ConsoleSettings(results_url=f"s3://{bucket}/results",
                               s3_endpoint_url=s3_config.endpoint_url)
    got = read_output(settings, f"s3://{bucket}/results/t1/task/1/out.png")
    assert got.body == PNG and got.media_type == "image/png"
    for url in (f"s3://{bucket}/other/out.png", f"s3://{bucket}/results/../other/out.png",
                f"s3://{bucket}/results/t1/missing.png", f"s3://not-{bucket}/results/x.png"):
        with pytest.raises(OutputRefused):
            read_output(settings, url)


def test_result_urls_are_numbered_once_each() -> None:
    result = {"result_image_url": "file:///r/a.png", "result_video_url": None,
              "output_urls": ["file:///r/a.png", "file:///r/b.png"]}
    assert result_urls(result) == ["file:///r/a.png", "file:///r/b.png"]
    assert result_urls(None) == []


def test_a_login_link_signs_in_once() -> None:
    store = SessionStore(session_s=60, link_s=60)
    caller = Caller("k1", "tenant")
    token = store.issue_link(caller)
    assert store.redeem_link(token) == caller
    assert store.redeem_link(token) is None
    expired = SessionStore(session_s=60, link_s=0)  # expires as it is issued
    assert expired.redeem_link(expired.issue_link(caller)) is None
    sid, _ = store.open(caller)
    assert store.get(sid) is not None
    store.forget_key("k1")
    assert store.get(sid) is None
