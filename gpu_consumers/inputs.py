"""Fetching a task's input files (images, masks, references) within limits, safely.

``http(s)://``, ``s3://bucket/key`` (boto3 at ``S3_ENDPOINT_URL``; key as written, like the AWS CLI)
and ``file://`` (only below ``allowed_file_roots``: none by default; symlinks resolved first).
A task reads through :meth:`InputFetcher.for_task`: a view held to its tenant's
:class:`~gpu_consumers.input_scope.InputScope` (its own results only, configured folders and S3
prefixes). Every failure raises ``InvalidInput`` naming the URL (no credentials, no query
string); a file or an S3 object that is missing, refused or unreadable gets one message, "not
readable for this task" (the detail goes to the log), so a message never tells whether something
the task may not read exists, where, or how large it is. Private networks: the host is
resolved once, EVERY address checked (IPv4-mapped, 6to4, NAT64 by the IPv4 inside), then the
connection is pinned to a checked address with the original ``Host`` and TLS SNI (certificates
verified against the name); redirects are followed by hand, http(s) only, each re-checked.
Proxy variables are ignored and connections not kept alive. ``max_bytes`` is enforced while reading; ``timeout_s`` bounds connect
and each read, ``deadline_s`` the whole fetch. Images: ``width*height`` from the lazy header is
checked before decoding; Pillow's ``MAX_IMAGE_PIXELS`` is set per call, its bomb warning is an error.
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

import certifi
import httpx
from PIL import Image, ImageOps
from pydantic import Field, IPvAnyNetwork, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gpu_consumers.errors import InvalidInput
from gpu_consumers.input_scope import InputScope, TaskInputs
from gpu_consumers.storage import default_results_url, make_s3_client, s3_location
from schemas.address_policy import IPAddress, forbidden_reason

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG includes MPO
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PIL_LOCK = threading.Lock()  # Image.MAX_IMAGE_PIXELS and warning filters are process-wide
_DNS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="input-dns")  # getaddrinfo has no timeout
log = logging.getLogger("gpu_consumers.inputs")


def _split_list(value: Any) -> Any:  # from the environment: a JSON list or comma-separated items
    if isinstance(value, str) and not value.strip().startswith("["):
        return [item.strip() for item in value.split(",") if item.strip()]
    return json.loads(value) if isinstance(value, str) else value


class InputSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INPUT_", frozen=True, extra="ignore",
                                      validate_by_name=True, validate_by_alias=True)

    max_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    timeout_s: float = Field(default=10.0, gt=0)  # connect, and each read
    deadline_s: float = Field(default=60.0, gt=0)  # the whole fetch, redirects included
    max_redirects: int = Field(default=5, ge=0)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    allow_private_networks: bool = False
    allowed_networks: Annotated[list[IPvAnyNetwork], NoDecode] = Field(default_factory=list)
    # Folders file:// inputs may come from (none: file:// refused); never opens the results
    # folder beyond the task's own tenant (gpu_consumers.input_scope).
    allowed_file_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    # "bucket" or "bucket/prefix" (an s3:// in front is allowed) that s3:// inputs may come from.
    allowed_s3_prefixes: Annotated[list[tuple[str, str]], NoDecode] = Field(default_factory=list)
    results_http_url: str | None = None  # where the results store is served over http(s), if it is
    ca_bundle: Path | None = None  # extra CA certificates (PEM) for https, e.g. an internal CA
    s3_endpoint_url: str | None = Field(default=None, validation_alias="S3_ENDPOINT_URL")
    results_url: str = Field(default_factory=default_results_url, validation_alias="RESULTS_URL")

    _lists = field_validator("allowed_networks", "allowed_file_roots", mode="before")(_split_list)

    @field_validator("allowed_s3_prefixes", mode="before")
    @classmethod
    def _bucket_and_prefix(cls, value: Any) -> Any:
        return [s3_location(item) if isinstance(item, str) else item
                for item in _split_list(value)]


def redact(url: str, *, last_segment_only: bool = False) -> str:
    """The URL as shown in messages: no user/password, no query string (presigned secrets); with
    ``last_segment_only`` no folder or key prefix either (``file:///…/output.png``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "<malformed URL>"
    path = parts.path
    if last_segment_only and path.rstrip("/").count("/") > 1:
        path = "/…/" + path.rstrip("/").rsplit("/", 1)[1][-80:]
    shown = f"{parts.scheme}://{netloc}{path}" + ("?…" if parts.query else "")
    return shown if len(shown) <= 200 else shown[:199] + "…"


class InputFetcher:
    """Fetches input URLs under the limits of :class:`InputSettings` (see the module doc)."""

    def __init__(self, settings: InputSettings | None = None, *, s3_client: Any = None) -> None:
        self.settings = s = settings or InputSettings()
        self._s3_client = s3_client
        self._s3_lock = threading.Lock()
        verify = ssl.create_default_context(cafile=certifi.where())  # as httpx does by default
        if s.ca_bundle:
            verify.load_verify_locations(cafile=str(s.ca_bundle))
        self._http = httpx.Client(trust_env=False, follow_redirects=False, verify=verify,
                                  limits=httpx.Limits(max_keepalive_connections=0),
                                  headers={"User-Agent": "compute-server-inputs/1"})

    def close(self) -> None:
        self._http.close()

    def for_task(self, tenant_id: str | None) -> TaskInputs:
        """The fetcher as a task of ``tenant_id`` may use it (``ctx.fetch``)."""
        return TaskInputs(self, InputScope(self.settings, tenant_id))

    def fetch_bytes(self, url: str, *, scope: InputScope | None = None) -> bytes:
        """``scope`` None: the process's own rights (file:// below the allowed roots, any S3
        object its credentials read) - for URLs this deployment made, never a task's."""
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        deadline = time.monotonic() + self.settings.deadline_s
        if scheme in ("http", "https"):
            return self._fetch_http(url, deadline, scope)
        if scheme == "s3":
            return self._fetch_s3(url, deadline, scope)
        if scheme == "file":
            return self._fetch_file(url, scope)
        raise InvalidInput(f"{redact(url)}: unsupported URL scheme {scheme!r} (use http, https, s3 or file)")

    def fetch_image(self, url: str, *, mode: str | None = "RGB",
                    scope: InputScope | None = None) -> Image.Image:
        max_pixels = self.settings.max_image_pixels
        return decode_image(self.fetch_bytes(url, scope=scope), redact(url), max_pixels=max_pixels,
                            mode=mode)

    @staticmethod
    def _not_readable(url: str, why: str) -> InvalidInput:
        """One message for missing, refused and unreadable alike, naming no folder or key prefix
        (nor the results root); the reason only in the log, for operators."""
        log.info("input %s refused: %s", redact(url), why)
        return InvalidInput(f"input {redact(url, last_segment_only=True)} is not readable for this task")

    def _fetch_http(self, url: str, deadline: float, scope: InputScope | None) -> bytes:
        try:
            target = httpx.URL(url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise InvalidInput(f"{redact(url)}: malformed URL ({exc})") from None
        for _ in range(self.settings.max_redirects + 1):
            if scope is not None and not scope.http_allowed(target):
                raise self._not_readable(str(target), "the results store or an S3 object "
                                         "outside the task's scope, over http")
            result = self._http_get(target, deadline)
            if isinstance(result, bytes):
                return result
            target = result
        limit = self.settings.max_redirects
        raise InvalidInput(f"{redact(url)}: more than {limit} redirects (INPUT_MAX_REDIRECTS)")

    def _http_get(self, target: httpx.URL, deadline: float) -> bytes | httpx.URL:
        shown, host = redact(str(target)), target.raw_host.decode("ascii")
        if not host:
            raise InvalidInput(f"{shown}: the URL names no host")
        port = target.port or (443 if target.scheme == "https" else 80)
        error: Exception | None = None
        for ip in self._checked_addresses(host, port, shown, deadline):
            try:
                return self._http_get_pinned(target, ip, shown, deadline)
            except httpx.ConnectError as exc:  # try the next checked address
                error = exc
        raise InvalidInput(f"{shown}: unreachable ({error or 'no address'})")

    def _checked_addresses(self, host: str, port: int, shown: str, deadline: float) -> list[IPAddress]:
        try:
            addresses: list[IPAddress] = [ipaddress.ip_address(host)]
        except ValueError:
            future = _DNS.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
            try:
                infos = future.result(timeout=self._remaining(deadline, shown))
            except FutureTimeout:
                raise InvalidInput(f"{shown}: timed out resolving {host}") from None
            except (OSError, UnicodeError) as exc:
                raise InvalidInput(f"{shown}: unreachable, cannot resolve {host} ({exc})") from None
            addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        s = self.settings
        for ip in addresses:
            reason = None if s.allow_private_networks else forbidden_reason(ip)
            if reason and not any(ip in net for net in s.allowed_networks):
                raise InvalidInput(f"{shown}: refused, {host} is a {reason}: private networks are "
                                   f"not allowed (INPUT_ALLOW_PRIVATE_NETWORKS / INPUT_ALLOWED_NETWORKS)")
        return addresses

    def _http_get_pinned(self, target: httpx.URL, ip: IPAddress, shown: str, deadline: float) -> Any:
        timeout = min(self.settings.timeout_s, self._remaining(deadline, shown))
        headers = {"Host": target.netloc.decode("ascii"), "Accept-Encoding": "identity"}
        sni = {"sni_hostname": target.raw_host.decode("ascii")} if target.scheme == "https" else {}
        try:
            with self._http.stream("GET", target.copy_with(host=ip.compressed), headers=headers,
                                   extensions=sni, timeout=httpx.Timeout(timeout)) as response:
                if response.status_code in _REDIRECTS and "location" in response.headers:
                    following = target.join(response.headers["location"])
                    if following.scheme not in ("http", "https"):
                        raise InvalidInput(f"{shown}: redirect to {redact(str(following))} refused")
                    return following
                if not response.is_success:
                    status = f"HTTP {response.status_code} {response.reason_phrase}"
                    raise InvalidInput(f"{shown}: the server answered {status}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.settings.max_bytes:
                    raise self._too_large(shown, f"{declared} bytes declared")
                return self._read_limited(response.iter_bytes(65536), shown, deadline)
        except httpx.TimeoutException:
            raise InvalidInput(f"{shown}: timed out (no answer within {timeout:.3g}s)") from None
        except httpx.ConnectError:
            raise
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL: a bad Location header
            raise InvalidInput(f"{shown}: transfer failed ({type(exc).__name__}: {exc})") from None

    def _fetch_s3(self, url: str, deadline: float, scope: InputScope | None) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError
        shown = redact(url)
        bucket, _, key = url[len("s3://"):].partition("/")
        if not bucket or not key:
            raise InvalidInput(f"{shown}: an S3 URL needs a bucket and a key (s3://bucket/key)")
        bucket = bucket.lower()  # S3 bucket names are lower case; a server may fold them
        if scope is not None and not scope.s3_allowed(bucket, key):
            raise self._not_readable(url, "outside INPUT_ALLOWED_S3_PREFIXES and the tenant's results")
        try:
            with self._s3_lock:
                if self._s3_client is None:
                    s = self.settings
                    self._s3_client = make_s3_client(s.s3_endpoint_url, timeout_s=s.timeout_s)
            obj = self._s3_client.get_object(Bucket=bucket, Key=key)
            try:
                if obj.get("ContentLength", 0) > self.settings.max_bytes:
                    raise self._too_large(shown, f"{obj['ContentLength']} bytes")
                return self._read_limited(obj["Body"].iter_chunks(65536), shown, deadline)
            finally:
                obj["Body"].close()
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise self._not_readable(url, f"S3 refused ({err.get('Code')}: {err.get('Message')})") from None
        except BotoCoreError as exc:
            raise self._not_readable(url, f"S3 endpoint unreachable or timed out ({exc})") from None

    def _fetch_file(self, url: str, scope: InputScope | None) -> bytes:
        shown, parts = redact(url), urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise InvalidInput(f"{shown}: file:// URLs must name a local path (no host)")
        try:
            path = Path(unquote(parts.path)).resolve(strict=True)
        except (OSError, RuntimeError, ValueError) as exc:  # ValueError: a NUL byte
            raise self._not_readable(url, f"cannot resolve ({type(exc).__name__})") from None
        allowed = (scope.file_allowed(path) if scope is not None else
                   any(path.is_relative_to(Path(root).resolve()) for root in self.settings.allowed_file_roots))
        if not allowed:
            raise self._not_readable(url, f"{path} is outside INPUT_ALLOWED_FILE_ROOTS and the "
                                     "tenant's results")
        try:
            if not path.is_file():
                raise self._not_readable(url, "not a regular file")
            with path.open("rb") as handle:
                data = handle.read(self.settings.max_bytes + 1)
        except OSError as exc:
            raise self._not_readable(url, f"cannot read ({exc.strerror or exc})") from None
        if len(data) > self.settings.max_bytes:
            raise self._too_large(shown)
        return data

    def _read_limited(self, chunks: Any, shown: str, deadline: float) -> bytes:
        buffer = bytearray()
        for chunk in chunks:
            buffer += chunk
            if len(buffer) > self.settings.max_bytes:
                raise self._too_large(shown, "stopped reading")
            self._remaining(deadline, shown)
        return bytes(buffer)

    def _too_large(self, shown: str, detail: str = "") -> InvalidInput:
        limit = f"{shown}: too large, over the {self.settings.max_bytes}-byte limit (INPUT_MAX_BYTES)"
        return InvalidInput(limit + (f"; {detail}" if detail else ""))

    def _remaining(self, deadline: float, shown: str) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise InvalidInput(f"{shown}: timed out, over {self.settings.deadline_s:g}s (INPUT_DEADLINE_S)")
        return remaining


def decode_image(data: bytes, shown: str, *, max_pixels: int, mode: str | None = "RGB") -> Image.Image:
    """Decode ``data`` after checking the header's pixel count; ``shown`` names the source."""
    saved = Image.MAX_IMAGE_PIXELS
    with _PIL_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidInput(f"{shown}: image of {width}x{height} = {width * height} pixels, "
                                   f"over the {max_pixels}-pixel limit (INPUT_MAX_IMAGE_PIXELS)")
            image.load()
            image = ImageOps.exif_transpose(image)
            return image.convert(mode) if mode else image.copy()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InvalidInput(f"{shown}: over {max_pixels} pixels (INPUT_MAX_IMAGE_PIXELS): {exc}") from None
        except Image.UnidentifiedImageError:
            formats = ", ".join(IMAGE_FORMATS)
            raise InvalidInput(f"{shown}: not an image ({len(data)} bytes; accepted: {formats})") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidInput(f"{shown}: the image cannot be decoded ({exc})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
