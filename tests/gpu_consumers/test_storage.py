"""Output stores against a real folder and the real S3 test endpoint."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest

from gpu_consumers.errors import InvalidInput, StorageFailure
from gpu_consumers.handlers.base import OutputFile
from gpu_consumers.storage import (
    UNTENANTED,
    FileStore,
    S3Store,
    StorageSettings,
    default_results_url,
    file_url_path,
    open_store,
    tenant_segment,
)

PNG_OUT = OutputFile(data=b"\x89PNG fake bytes", content_type="image/png", suffix=".png")
TEXT_OUT = OutputFile(data="une réponse".encode(), content_type="text/plain; charset=utf-8", suffix=".txt")


# ---------------------------------------------------------------------------- file://

def test_file_store_writes_under_task_attempt_name(results_dir: Path) -> None:
    store = FileStore(results_dir)
    url = store.put("task-1", 2, "output_0", PNG_OUT)
    path = results_dir.resolve() / UNTENANTED / "task-1" / "2" / "output_0.png"
    assert url == path.as_uri() and url.startswith("file:///")
    assert file_url_path(url) == path and path.read_bytes() == PNG_OUT.data
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["output_0.png"]  # no temp file left behind

    # At-least-once: the same attempt run again replaces its output.
    again = OutputFile(data=b"second run", content_type="image/png", suffix=".png")
    assert store.put("task-1", 2, "output_0", again) == url
    assert path.read_bytes() == b"second run" and os.listdir(path.parent) == ["output_0.png"]

    store.delete(url)
    assert not path.exists() and not (results_dir / UNTENANTED / "task-1").exists()  # empty folders go too
    store.delete(url)  # already gone: no error


def test_file_store_write_is_atomic(results_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the final rename fails, the old result stays whole and no partial file remains."""
    store = FileStore(results_dir)
    url = store.put("task-2", 1, "output_0", PNG_OUT)

    def failing_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StorageFailure, match=r"writing .*task-2/1/output_0.png failed: No space left"):
        store.put("task-2", 1, "output_0", OutputFile(b"new", "image/png", ".png"))
    path = file_url_path(url)
    assert path.read_bytes() == PNG_OUT.data and os.listdir(path.parent) == ["output_0.png"]


def test_file_store_a_failed_sync_leaves_no_file_behind(results_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StorageFailure, match=r"writing .*task-3/1/output.png failed: Input/output error"):
        FileStore(results_dir).put("task-3", 1, "output", PNG_OUT)
    assert os.listdir(results_dir / UNTENANTED / "task-3" / "1") == []  # neither the temp file nor a name


def test_file_store_syncs_the_renamed_file_and_its_folder(
        results_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[tuple[str, bool]] = []  # (path, is a directory) of each fsync, in order
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store, root = FileStore(results_dir), results_dir.resolve()
    store.put("task-9", 1, "output", PNG_OUT)
    # The file under its final name (renamed, then synced), then the folder holding that name.
    folder = root / UNTENANTED / "task-9" / "1"
    assert synced == [(str(folder / "output.png"), False), (str(folder), True)]


def test_file_store_without_fsync_writes_atomically_and_syncs_nothing(
        results_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RESULTS_FSYNC=false (a throw-away folder): still a whole file under its name, no fsync."""
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    monkeypatch.setenv("RESULTS_URL", results_dir.as_uri())
    monkeypatch.setenv("RESULTS_FSYNC", "false")
    store = StorageSettings().open()
    assert isinstance(store, FileStore) and store.fsync is False and "fsync=False" in repr(store)
    url = store.put("task-10", 0, "output", PNG_OUT)
    path = file_url_path(url)
    assert path.read_bytes() == PNG_OUT.data and os.listdir(path.parent) == ["output.png"]
    assert synced == []
    assert FileStore(results_dir).fsync is True  # the default: durable


def test_file_store_os_errors_are_storage_failures(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(StorageFailure, match="not-a-folder/_untenanted/task-3/0/output_0.txt failed"):
        FileStore(blocker).put("task-3", 0, "output_0", TEXT_OUT)
    store = FileStore(tmp_path / "results")
    with pytest.raises(StorageFailure, match="outside the results folder"):
        store.delete(blocker.as_uri())
    with pytest.raises(StorageFailure, match="not a local file:// URL"):
        store.delete("s3://bucket/key")


@pytest.mark.parametrize("task_id, name, suffix", [
    ("../etc", "output_0", ".png"), ("a/b", "output_0", ".png"), ("", "output_0", ".png"),
    ("task", "..", ".png"), ("task", ".hidden", ".png"), ("task", "out", "/x"), ("task", "out", ".p/g"),
])
def test_unsafe_path_parts_are_refused(results_dir: Path, task_id: str, name: str, suffix: str) -> None:
    with pytest.raises(InvalidInput):
        FileStore(results_dir).put(task_id, 0, name, OutputFile(b"x", "image/png", suffix))
    assert list(results_dir.iterdir()) == []


# ---------------------------------------------------------------------------- tenants

@pytest.mark.parametrize("tenant_id, segment", [
    (None, UNTENANTED), ("acme", "acme"), ("tenant-7_b", "tenant-7_b"),
])
def test_a_plain_tenant_id_is_its_own_segment(tenant_id: str | None, segment: str) -> None:
    assert tenant_segment(tenant_id) == segment


def test_any_other_tenant_id_is_hashed_into_a_segment_of_its_own() -> None:
    odd = ["Acme", "ACME", "..", ".", "", "a/b", "a\\b", "acme.", "acme ", "ünï", "_untenanted",
           "_t-x", "a" * 64, "x\udfff", "acme/../other"]
    segments = [tenant_segment(t) for t in odd]
    assert len(set(segments)) == len(odd)  # no two tenants share one, case variants included
    for segment in segments:
        assert segment.startswith("_t-") and len(segment) == 35 and segment[3:].isalnum()
        assert segment[3:] == segment[3:].lower()
    assert UNTENANTED not in segments and "acme" not in segments


def test_file_store_keeps_each_tenant_under_its_own_folder(results_dir: Path) -> None:
    store = FileStore(results_dir)
    root = results_dir.resolve()
    for tenant in ("acme", "../escape", "/etc"):
        url = store.put("task-1", 1, "output", PNG_OUT, tenant_id=tenant)
        assert file_url_path(url) == root / tenant_segment(tenant) / "task-1" / "1" / "output.png"
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["acme", tenant_segment("../escape"), tenant_segment("/etc")])


# ---------------------------------------------------------------------------- s3://

@pytest.fixture
def bucket(s3_config: Any) -> str:
    name = f"results-{uuid.uuid4().hex[:12]}"
    s3_config.client().create_bucket(Bucket=name)
    return name


def test_s3_store_put_get_delete(s3_config: Any, bucket: str) -> None:
    client = s3_config.client()
    store = S3Store(bucket, "/runs/2024/", client)
    url = store.put("task-4", 1, "output_0", PNG_OUT, tenant_id="acme")
    assert url == f"s3://{bucket}/runs/2024/acme/task-4/1/output_0.png"
    obj = client.get_object(Bucket=bucket, Key="runs/2024/acme/task-4/1/output_0.png")
    assert obj["Body"].read() == PNG_OUT.data and obj["ContentType"] == "image/png"
    text_url = S3Store(bucket, "", client).put("task-4", 1, "answer", TEXT_OUT)
    assert text_url == f"s3://{bucket}/_untenanted/task-4/1/answer.txt"
    head = client.head_object(Bucket=bucket, Key="_untenanted/task-4/1/answer.txt")
    assert head["ContentType"] == "text/plain; charset=utf-8"

    store.delete(url)
    assert client.list_objects_v2(Bucket=bucket, Prefix="runs/").get("KeyCount") == 0
    with pytest.raises(StorageFailure, match="not an object of"):
        store.delete("s3://another-bucket/runs/2024/acme/task-4/1/output_0.png")


def test_s3_store_missing_bucket_is_a_storage_failure(s3_config: Any) -> None:
    missing = f"missing-{uuid.uuid4().hex[:12]}"
    store = S3Store(missing, "out", s3_config.client())
    expected = f"writing s3://{missing}/out/_untenanted/task-5/0/output_0.png failed: NoSuchBucket"
    with pytest.raises(StorageFailure, match=expected):
        store.put("task-5", 0, "output_0", PNG_OUT)


def test_s3_store_unreachable_endpoint_is_a_storage_failure() -> None:
    import socket

    from devstack.s3 import s3_client

    with socket.socket() as closed:  # bound, never listening
        closed.bind(("127.0.0.1", 0))
        client = s3_client(f"http://127.0.0.1:{closed.getsockname()[1]}")
        with pytest.raises(StorageFailure, match="s3://b/_untenanted/task-6/0/output_0.png failed: Could not connect"):
            S3Store("b", "", client).put("task-6", 0, "output_0", PNG_OUT)


# ---------------------------------------------------------------------------- open_store, settings

def test_open_store_by_scheme(results_url: str, results_dir: Path, s3_config: Any, bucket: str,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(results_url)
    assert isinstance(store, FileStore) and store.root == results_dir.resolve()
    assert store.put("task-7", 0, "output_0", PNG_OUT).startswith(results_url + "/_untenanted/task-7/0/")

    for name, value in s3_config.env().items():
        monkeypatch.setenv(name, value)  # boto3's usual credential chain
    s3 = open_store(f"s3://{bucket}/prefix", s3_config.endpoint_url)
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix) == (bucket, "prefix")
    url = s3.put("task-7", 0, "output_0", PNG_OUT, tenant_id="acme")
    assert s3_config.client().get_object(Bucket=bucket, Key="prefix/acme/task-7/0/output_0.png")["Body"].read() \
        == PNG_OUT.data
    assert url == f"s3://{bucket}/prefix/acme/task-7/0/output_0.png"

    with pytest.raises(ValueError, match="unsupported scheme"):
        open_store("ftp://host/results")
    with pytest.raises(ValueError, match="names no bucket"):
        open_store("s3:///prefix")


def test_storage_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RESULTS_URL", raising=False)
    monkeypatch.delenv("S3_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("RESULTS_FSYNC", raising=False)
    settings = StorageSettings()
    assert settings.results_fsync is True
    expected = (tmp_path / "cache" / "compute-server" / "results").as_uri()
    assert settings.results_url == default_results_url() == expected
    assert settings.s3_endpoint_url is None and isinstance(settings.open(), FileStore)

    monkeypatch.setenv("RESULTS_URL", "s3://bucket/prefix")
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://minio:9000")
    settings = StorageSettings()
    assert (settings.results_url, settings.s3_endpoint_url) == ("s3://bucket/prefix", "http://minio:9000")
    monkeypatch.setenv("RESULTS_URL", "/not/a/url")
    with pytest.raises(ValueError, match="RESULTS_URL must be"):
        StorageSettings()
