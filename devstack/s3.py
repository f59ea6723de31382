"""A real S3-compatible HTTP endpoint for tests: moto's standalone server in its own process.

Region ``us-east-1`` and the dummy credentials ``test``/``test`` are set in the environment of
our own processes only (the server's, and the ``env()`` the stack hands to its clients); the
caller's environment is not touched. Results of the embedded default go to a local ``file://``
folder instead (see ``LocalStack``); this endpoint is what tests of the S3 path talk to.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from devstack.procs import (
    DevStackError,
    free_port,
    proc_start_ticks,
    spawn,
    tail,
    wait_until,
)
from devstack.server import ServerProcess, record_owner, sweep_stale_workdirs

REGION = "us-east-1"
ACCESS_KEY = "test"
SECRET_KEY = "test"


def s3_credentials_env() -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
    }


def http_answers(url: str, timeout: float = 1.0) -> bool:
    """True when an HTTP server answers at ``url`` (any status code counts)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def s3_client(
    endpoint_url: str,
    *,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    region: str = REGION,
) -> Any:
    """A boto3 S3 client for ``endpoint_url`` with explicit credentials (path-style addressing)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


def create_bucket(endpoint_url: str, bucket: str, **client_kwargs: str) -> None:
    """Create ``bucket`` (no-op when it exists and is ours)."""
    client = s3_client(endpoint_url, **client_kwargs)
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass


class S3Endpoint(ServerProcess):
    """moto's S3 server (``python -m moto.server``) on a free port of 127.0.0.1."""

    def __init__(self, *, port: int | None = None, detached: bool = False, base_dir: Path | str | None = None):
        self.port = port
        super().__init__(detached=detached, base_dir=base_dir)

    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise DevStackError("the S3 endpoint has not been started")
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        return {"S3_ENDPOINT_URL": self.endpoint_url, **s3_credentials_env()}

    def create_bucket(self, bucket: str) -> None:
        create_bucket(self.endpoint_url, bucket)

    def client(self) -> Any:
        return s3_client(self.endpoint_url)

    # start() (ServerProcess): returns once the server answers HTTP.

    def prepare(self, timeout: float = 60.0) -> None:
        """Port and temp dir. Thread-safe."""
        if self.pid is not None or self.workdir is not None:
            raise DevStackError("the S3 endpoint is already started")
        self._t0 = time.monotonic()
        if self.port is None:
            self.port = free_port()
        sweep_stale_workdirs("devstack-s3-", self.base_dir)
        self.workdir = Path(tempfile.mkdtemp(prefix="devstack-s3-", dir=self.base_dir))

    def launch(self) -> None:
        """Start the server. Call it from the thread that outlives it (see spawn)."""
        assert self.workdir is not None, "prepare() first"
        env = {**os.environ, **s3_credentials_env(), "PYTHONUNBUFFERED": "1"}
        self._proc = spawn(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
            log_path=self.workdir / "moto.log",
            detached=self.detached,
            env=env,
            cwd=self.workdir,
        )
        self.pid = self._proc.pid
        self.start_ticks = proc_start_ticks(self.pid)
        record_owner(self.workdir, self.pid, self.start_ticks)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll until moto answers HTTP. Thread-safe."""
        assert self.workdir is not None
        log = self.workdir / "moto.log"

        def exited() -> str | None:
            if self._cancelled.is_set():
                return "start cancelled"
            code = self._proc.poll()
            if code is None:
                return None
            return f"the moto S3 server exited with code {code} while starting\n{tail(log)}"

        remaining = max(1.0, timeout - (time.monotonic() - self._t0))
        # moto's management API answers once the WSGI app is serving.
        if not wait_until(lambda: http_answers(f"{self.endpoint_url}/moto-api/"), remaining,
                          interval=0.1, abort=exited):
            raise DevStackError(
                f"the moto S3 server on port {self.port} did not answer within {timeout:.0f}s\n{tail(log)}"
            )
        self.start_seconds = time.monotonic() - self._t0

    def cancel(self) -> None:
        """Make a wait_ready() in another thread give up at its next poll."""
        self._cancelled.set()

    def ping(self, timeout: float = 2.0) -> bool:
        return self.port is not None and http_answers(f"{self.endpoint_url}/moto-api/", timeout)

    def stop(self, timeout: float = 15.0, *, keep_files: bool = False) -> None:
        super().stop(timeout, keep_files=keep_files)

    def to_state(self) -> dict[str, Any]:
        return {
            **self._process_state(),
            "port": self.port,
            "endpoint_url": self.endpoint_url if self.port else None,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> S3Endpoint:
        endpoint = cls(port=state.get("port"), detached=True)
        endpoint.pid = state.get("pid")
        endpoint.start_ticks = state.get("start_ticks")
        endpoint.workdir = Path(state["workdir"]) if state.get("workdir") else None
        return endpoint
