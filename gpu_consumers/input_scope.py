"""Which inputs a task may read: its own tenant's results, and what an operator configured.

The worker reads inputs with its own rights (its file system, its S3 credentials), so each
task gets a view of the fetcher (:class:`TaskInputs`, ``ctx.fetch``) that checks every URL
against an :class:`InputScope` first. The rules (docs/SECURITY.md, "Tenants and task inputs"):

- the results store (``RESULTS_URL``: a folder, or an S3 bucket and prefix; served over http at
  ``INPUT_RESULTS_HTTP_URL`` when set) is readable only below the task's own tenant segment
  (``gpu_consumers.storage.tenant_segment``), whatever any other setting says;
- ``file://`` only below ``INPUT_ALLOWED_FILE_ROOTS`` (none by default);
- ``s3://`` only below ``INPUT_ALLOWED_S3_PREFIXES`` (none by default); an http(s) URL that
  names an object of the S3 endpoint (``S3_ENDPOINT_URL``, or AWS's hosts), path-style or
  virtual-host style, is held to the same rule;
- everything is normalised first: a file path is resolved (``..``, symlinks, ``//``), a URL path
  or key is percent-decoded until it no longer changes and refused when a segment is empty,
  ``.``, ``..``, or ends in a dot or a space; buckets and hosts compare in lower case.

The caller turns a refusal into the same message as "not found": the tenant learns nothing
about what exists outside what it may read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from gpu_consumers.storage import file_url_path, s3_location, tenant_segment

if TYPE_CHECKING:
    from gpu_consumers.inputs import InputFetcher, InputSettings

_DECODE_ROUNDS = 8  # %25 nested deeper than this is refused rather than decoded further


def clean_segments(path: str) -> list[str] | None:
    """``path`` ('/'-separated, percent-encoded or not) as decoded segments, or None when any
    decoding of it could name something else than it seems: a segment that is empty, ``.``,
    ``..``, ends in a dot or a space, or holds a backslash or a control character."""
    decoded = path
    for _ in range(_DECODE_ROUNDS):
        try:
            once = unquote(decoded, errors="strict")
        except UnicodeDecodeError:  # not UTF-8 once decoded: no name of ours
            return None
        if once == decoded:
            break
        decoded = once
    else:
        return None
    segments = decoded.split("/")
    for segment in segments:
        if (not segment or segment in (".", "..") or segment[-1] in ". " or "\\" in segment
                or any(ord(c) < 32 or ord(c) == 127 for c in segment)):
            return None
    return segments


def _under(segments: list[str], prefix: list[str]) -> bool:
    """Strictly below ``prefix`` (an object or file inside it, not the prefix itself)."""
    return len(segments) > len(prefix) and segments[:len(prefix)] == prefix


@dataclass(frozen=True)
class _Host:
    host: str  # lower case, no trailing dot
    port: int

    @classmethod
    def of(cls, url: str) -> _Host | None:
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return None
        host = (parts.hostname or "").lower().rstrip(".")
        return cls(host, port) if host else None


class InputScope:
    """The rules above for one tenant (``None``: tasks without a tenant, with a segment of their
    own). Built from :class:`~gpu_consumers.inputs.InputSettings`; cheap, one per task."""

    def __init__(self, settings: InputSettings, tenant_id: str | None) -> None:
        self.segment = tenant_segment(tenant_id)
        results = settings.results_url
        self._results_root: Path | None = None
        self._results_s3: tuple[str, list[str]] | None = None
        if results.startswith("file:"):
            self._results_root = file_url_path(results).resolve()
        elif results.startswith("s3://"):
            bucket, prefix = s3_location(results)
            self._results_s3 = (bucket, prefix.split("/") if prefix else [])
        self._file_roots = [Path(root).resolve() for root in settings.allowed_file_roots]
        self._s3_prefixes = [(bucket, prefix.split("/") if prefix else [])
                             for bucket, prefix in settings.allowed_s3_prefixes]
        self._results_http = _Host.of(settings.results_http_url or "")
        self._results_http_path = ((clean_segments(urlsplit(settings.results_http_url).path.strip("/"))
                                    or []) if settings.results_http_url else [])
        self._s3_endpoint = _Host.of(settings.s3_endpoint_url or "")

    def file_allowed(self, path: Path) -> bool:
        """``path`` must be resolved (symlinks, ``..``) by the caller."""
        root = self._results_root
        if root is not None and (path == root or path.is_relative_to(root)):
            own = root / self.segment
            return path != own and path.is_relative_to(own)
        return any(path.is_relative_to(allowed) for allowed in self._file_roots)

    def s3_allowed(self, bucket: str, key: str) -> bool:
        segments, bucket = clean_segments(key), bucket.lower()
        if segments is None:
            return False
        if self._results_s3 is not None:
            results_bucket, prefix = self._results_s3
            if bucket == results_bucket and (not prefix or segments[:len(prefix)] == prefix):
                return _under(segments, [*prefix, self.segment])
        return any(bucket == allowed and _under(segments, prefix)
                   for allowed, prefix in self._s3_prefixes)

    def http_allowed(self, url: Any) -> bool:
        """``url``: an ``httpx.URL`` (each redirect target is checked again)."""
        host = _Host.of(str(url))
        if host is None:
            return False
        path = url.raw_path.decode("ascii").split("?", 1)[0]
        if self._results_http is not None and host == self._results_http:
            segments = clean_segments(path.strip("/")) if path.strip("/") else []
            if segments is None:
                return False
            base = self._results_http_path
            if segments[:len(base)] == base:
                return _under(segments[len(base):], [self.segment])
        targets = self._s3_objects(host, path)  # all must pass: a host name can be ambiguous
        return all(bool(bucket and key) and self.s3_allowed(bucket, key) for bucket, key in targets)

    def _s3_objects(self, host: _Host, path: str) -> list[tuple[str, str]]:
        """The (bucket, key) pairs ``host`` + ``path`` may name when ``host`` is the S3 endpoint
        (path-style: the bucket is the first segment) or a bucket's virtual host of it; none when
        it is no S3 host. AWS host names are read every way they could be (``s3.``,
        ``s3.<region>.``, ``s3-<region>.``, ``<bucket>.s3...``: a bucket's name may start with s3)."""
        segments = clean_segments(path.lstrip("/")) or [""]  # an unclean path names no object
        path_style = (segments[0], "/".join(segments[1:]))
        if self._s3_endpoint is not None:
            endpoint = self._s3_endpoint
            if host.port != endpoint.port:
                return []
            if host.host == endpoint.host:
                return [path_style]
            if host.host.endswith("." + endpoint.host):
                return [(host.host[:-len(endpoint.host) - 1], path.lstrip("/"))]
            return []
        if not host.host.endswith(".amazonaws.com"):
            return []
        labels = host.host.split(".")
        return [path_style if i == 0 else (".".join(labels[:i]), path.lstrip("/"))
                for i, label in enumerate(labels) if label.startswith("s3")]


class TaskInputs:
    """``ctx.fetch`` of one task: :class:`~gpu_consumers.inputs.InputFetcher`'s interface, each
    URL checked against the task's :class:`InputScope`."""

    def __init__(self, fetcher: InputFetcher, scope: InputScope) -> None:
        self._fetcher, self.scope = fetcher, scope

    def fetch_bytes(self, url: str) -> bytes:
        return self._fetcher.fetch_bytes(url, scope=self.scope)

    def fetch_image(self, url: str, *, mode: str | None = "RGB") -> Any:
        return self._fetcher.fetch_image(url, mode=mode, scope=self.scope)
