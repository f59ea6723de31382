"""The console's settings and the one thing it serves that the REST routes do not: the bytes of
a result, read from the same results store the workers write (no second source of truth).

Result bytes are only ever served for a URL that a task the caller may read names (its own
tenant's; any tenant's for an operator key, as GET /tasks/{id} answers), and only from inside
the configured results root (``RESULTS_URL``): a stored URL pointing elsewhere is refused, never
followed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gpu_consumers.storage import (
    default_results_url,
    file_url_path,
    make_s3_client,
    s3_location,
)


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COMPUTE_CONSOLE_", frozen=True, extra="ignore")

    # Where the workers write results: the console serves bytes from below it only.
    results_url: str = Field(default_factory=default_results_url, validation_alias="RESULTS_URL")
    s3_endpoint_url: str | None = Field(default=None, validation_alias="S3_ENDPOINT_URL")
    # A signed-in browser stays signed in this long (the key's revocation ends it sooner).
    session_s: float = Field(default=8 * 3600.0, gt=0)
    # A one-time login link is good for one use within this long.
    login_link_s: float = Field(default=600.0, gt=0)
    # The overview stream re-reads the fleet's Kafka figures (operators) at most this often.
    kafka_refresh_s: float = Field(default=2.0, gt=0)
    # Cookies only over HTTPS (set it behind TLS; the local stack is plain HTTP).
    secure_cookie: bool = False


class OutputRefused(Exception):
    """A result URL the console will not serve (outside the results root, or unreadable)."""


@dataclass(frozen=True)
class Output:
    body: bytes | None
    path: Path | None
    media_type: str


_MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
          ".gif": "image/gif", ".mp4": "video/mp4", ".webm": "video/webm", ".txt": "text/plain",
          ".json": "application/json"}


def media_type(url: str) -> str:
    return _MEDIA.get(Path(urlsplit(url).path).suffix.lower(), "application/octet-stream")


def result_urls(result: dict[str, Any] | None) -> list[str]:
    """A result's stored URLs in a fixed order (the console's output numbers), each once."""
    if not result:
        return []
    urls = [result.get("result_image_url"), result.get("result_video_url"),
            *(result.get("output_urls") or [])]
    return list(dict.fromkeys(u for u in urls if u))


def read_output(settings: ConsoleSettings, url: str) -> Output:
    """The bytes (or the local file) of a stored result; blocking (S3)."""
    root = urlsplit(settings.results_url)
    if url.startswith("file:") and root.scheme == "file":
        base = file_url_path(settings.results_url).resolve()
        try:
            path = file_url_path(url).resolve()
        except ValueError as exc:
            raise OutputRefused(str(exc)) from None
        if not path.is_relative_to(base) or not path.is_file():
            raise OutputRefused("not a file below the results root")
        return Output(None, path, media_type(url))
    if url.startswith("s3://") and root.scheme == "s3":
        bucket, prefix = s3_location(settings.results_url)
        got_bucket, key = url.removeprefix("s3://").partition("/")[::2]
        if got_bucket.lower() != bucket or ".." in key.split("/") or (
                prefix and not key.startswith(prefix + "/")):
            raise OutputRefused("not an object below the results prefix")
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            client = make_s3_client(settings.s3_endpoint_url, timeout_s=10)
            obj = client.get_object(Bucket=got_bucket, Key=key)
            return Output(obj["Body"].read(), None, obj.get("ContentType") or media_type(url))
        except (BotoCoreError, ClientError) as exc:  # a missing object, the endpoint down
            raise OutputRefused(f"the object could not be read: {type(exc).__name__}") from None
    raise OutputRefused("not in the results store")
