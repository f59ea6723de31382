"""Where results go: a local folder (``file://``) or an S3-compatible bucket (``s3://``).

``open_store(results_url, s3_endpoint_url)`` picks the store by scheme:

- ``file:///path`` → :class:`FileStore`: ``<root>/<tenant>/<task_id>/<attempt>/<name><suffix>``, written
  atomically (a temp file in the same folder, ``os.replace``, fsync), so a reader never sees half
  a result and a re-run of the same attempt (at-least-once delivery) just replaces the file.
- ``s3://bucket/prefix`` → :class:`S3Store`: key ``<prefix>/<tenant>/<task_id>/<attempt>/<name><suffix>``,
  ``put_object`` with the output's ``ContentType``; the URL returned is ``s3://bucket/key``.

``<tenant>`` is :func:`tenant_segment` of the task's ``origin_tenant_id``: each tenant's results
live under a prefix of their own, the only part of the store a task of that tenant may name as
an input (``gpu_consumers.input_scope``; docs/SECURITY.md).

``StorageSettings``: ``RESULTS_URL`` (default ``file://$XDG_CACHE_HOME/compute-server/results``,
``~/.cache`` when unset: a per-user folder that survives reboots, unlike the temp folder),
``RESULTS_FSYNC`` (default true: a ``file://`` result is on disk before COMPLETED names it; false
skips the two fsyncs for a folder nobody keeps, such as the local stack's, which ``dev down``
deletes) and ``S3_ENDPOINT_URL`` (unset: AWS itself). Credentials come from boto3's usual chain
(``AWS_ACCESS_KEY_ID``...). Any OS or boto3 error raises
:class:`~gpu_consumers.errors.StorageFailure` (retried) naming what failed; a task id or output
name that is not a plain file name raises :class:`~gpu_consumers.errors.InvalidInput`.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gpu_consumers.errors import InvalidInput, StorageFailure
from gpu_consumers.handlers.base import OutputFile

_SAFE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_SAFE_SUFFIX = re.compile(r"(\.[A-Za-z0-9]{1,16})?")
# A tenant id used as it is: lower case only (a case-insensitive file system or server must not
# fold two tenants into one folder), no dots (no '.', '..' or trailing dot), no separators.
_PLAIN_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
UNTENANTED = "_untenanted"  # tasks without an origin_tenant_id (the CLI, internal producers)


def tenant_segment(tenant_id: str | None) -> str:
    """The folder / key segment of a tenant's results: a plain lower-case id as it is; any other
    id (upper case, dots, slashes, unicode, empty, long) as ``_t-`` and 32 hex digits of its
    SHA-256. Distinct tenants never share a segment: a plain id cannot start with ``_``."""
    if tenant_id is None:
        return UNTENANTED
    if _PLAIN_TENANT.fullmatch(tenant_id):
        return tenant_id
    return "_t-" + hashlib.sha256(tenant_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def default_results_url() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return (Path(base) / "compute-server" / "results").resolve().as_uri()


def file_url_path(url: str) -> Path:
    """The local path of a ``file://`` URL (``file:///p`` or ``file://localhost/p``)."""
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path:
        raise ValueError(f"not a local file:// URL: {url!r}")
    return Path(unquote(parts.path))


class StorageSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", validate_by_name=True,
                                      validate_by_alias=True)

    results_url: str = Field(default_factory=default_results_url, validation_alias="RESULTS_URL")
    # False: a throw-away folder (the local stack's) - its results need not survive a crash.
    results_fsync: bool = Field(default=True, validation_alias="RESULTS_FSYNC")
    s3_endpoint_url: str | None = Field(default=None, validation_alias="S3_ENDPOINT_URL")

    @field_validator("results_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("file:", "s3://")):
            raise ValueError("RESULTS_URL must be file:///path or s3://bucket[/prefix]")
        return value

    def open(self) -> OutputStore:
        return open_store(self.results_url, self.s3_endpoint_url, fsync=self.results_fsync)


class OutputStore(Protocol):
    def put(self, task_id: str, attempt: int, name: str, output: OutputFile, *,
            tenant_id: str | None = None) -> str:
        """Store ``output`` under ``tenant_id``'s prefix; returns its URL (``file://...`` or
        ``s3://...``)."""
        ...

    def delete(self, url: str) -> None:
        """Remove a stored output (no error when it is already gone)."""
        ...


def _relative_key(tenant_id: str | None, task_id: str, attempt: int, name: str, suffix: str) -> str:
    for label, part in (("task id", task_id), ("output name", name)):
        if not _SAFE_PART.fullmatch(part) or ".." in part:
            raise InvalidInput(f"{label} {part!r} cannot be used in a result path "
                               f"(letters, digits, '.', '_', '-'; at most 200)")
    if not _SAFE_SUFFIX.fullmatch(suffix):
        raise InvalidInput(f"output suffix {suffix!r} is not a plain extension such as '.png'")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise InvalidInput(f"attempt {attempt!r} is not a non-negative integer")
    return f"{tenant_segment(tenant_id)}/{task_id}/{attempt}/{name}{suffix}"


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore:
    """Results in a local folder, one file per output, written atomically; with ``fsync`` (the
    default) also durably before :meth:`put` returns."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root).resolve()
        # Without it a crash of the machine may lose a result that COMPLETED already names. The
        # two syncs are the largest part of a quick task's time in the worker under load (about
        # 1.4 ms of ~3.6, p99 ~5 ms: journal commits behind the broker's and database's writes).
        self.fsync = fsync

    def put(self, task_id: str, attempt: int, name: str, output: OutputFile, *,
            tenant_id: str | None = None) -> str:
        target = self.root / _relative_key(tenant_id, task_id, attempt, name, output.suffix)
        temp: str | None = None  # the file to remove if the write fails: the temp, then target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            with os.fdopen(fd, "wb") as handle:
                handle.write(output.data)
                handle.flush()
                os.fchmod(fd, 0o644)
                # Readers see the whole file or none (the bytes are written before the rename),
                # and it is durable before put() returns and COMPLETED names it: the file's
                # fsync keeps the bytes, the folder's keeps the name. Synced after the rename,
                # the file's journal commit (ext4, XFS: ordered) also carries the folders made
                # above; syncing their parents as well cost ~1 ms per task under load.
                os.replace(temp, target)
                temp = str(target)
                if self.fsync:
                    os.fsync(fd)
                    _sync_directory(target.parent)
            temp = None
        except OSError as exc:
            raise StorageFailure(f"writing {target} failed: {exc.strerror or exc}") from exc
        finally:
            if temp is not None:
                try:
                    os.unlink(temp)
                except OSError:
                    pass
        return target.as_uri()

    def delete(self, url: str) -> None:
        try:
            path = file_url_path(url).resolve()
        except ValueError as exc:
            raise StorageFailure(f"cannot delete {url!r}: {exc}") from None
        if not path.is_relative_to(self.root) or path == self.root:
            raise StorageFailure(f"cannot delete {url!r}: outside the results folder {self.root}")
        try:
            path.unlink(missing_ok=True)
            for folder in (path.parent, path.parent.parent):  # <attempt>/, <task_id>/ when empty
                if folder != self.root and folder.is_relative_to(self.root) and not any(folder.iterdir()):
                    folder.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageFailure(f"deleting {path} failed: {exc.strerror or exc}") from exc

    def __repr__(self) -> str:
        return f"FileStore({self.root.as_uri()}{'' if self.fsync else ', fsync=False'})"


class S3Store:
    """Results in an S3 bucket (any S3 API: AWS, MinIO, moto) through a boto3 client."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client

    def put(self, task_id: str, attempt: int, name: str, output: OutputFile, *,
            tenant_id: str | None = None) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        relative = _relative_key(tenant_id, task_id, attempt, name, output.suffix)
        key = f"{self.prefix}/{relative}" if self.prefix else relative
        url = f"s3://{self.bucket}/{key}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=output.data,
                                   ContentType=output.content_type)
        except ClientError as exc:
            raise StorageFailure(f"writing {url} failed: {_client_error(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageFailure(f"writing {url} failed: {exc}") from exc
        return url

    def delete(self, url: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, key = url.removeprefix("s3://").partition("/")
        if not url.startswith("s3://") or bucket != self.bucket or not key:
            raise StorageFailure(f"cannot delete {url!r}: not an object of s3://{self.bucket}")
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            raise StorageFailure(f"deleting {url} failed: {_client_error(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageFailure(f"deleting {url} failed: {exc}") from exc

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix})"


def _client_error(exc: Any) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")


def s3_location(location: str) -> tuple[str, str]:
    """(bucket, key prefix without end slashes) of ``s3://bucket[/prefix]`` (a results URL) or
    ``bucket[/prefix]`` (an allowed input prefix)."""
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"{location!r} names no bucket ([s3://]bucket[/prefix])")
    return bucket.lower(), prefix.strip("/")


def make_s3_client(endpoint_url: str | None, *, timeout_s: float = 30.0) -> Any:
    """A boto3 S3 client; path-style addressing for a custom endpoint (MinIO, moto)."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                    retries={"max_attempts": 3, "mode": "standard"},
                    s3={"addressing_style": "path"} if endpoint_url else None)
    return boto3.client("s3", endpoint_url=endpoint_url or None, config=config)


def open_store(results_url: str, s3_endpoint_url: str | None = None, *,
               fsync: bool = True) -> OutputStore:
    """The store for ``file:///path`` or ``s3://bucket[/prefix]``; ``fsync``: see FileStore."""
    scheme = urlsplit(results_url).scheme
    if scheme == "file":
        return FileStore(file_url_path(results_url), fsync=fsync)
    if scheme == "s3":
        bucket, prefix = s3_location(results_url)
        try:
            client = make_s3_client(s3_endpoint_url)
        except Exception as exc:  # botocore config/credential setup errors
            raise StorageFailure(f"cannot create an S3 client for {s3_endpoint_url or 'AWS'}: {exc}") from exc
        return S3Store(bucket, prefix, client)
    raise ValueError(f"RESULTS_URL {results_url!r}: unsupported scheme (file:///path or s3://bucket/prefix)")
