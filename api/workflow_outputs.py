"""POST /workflows/{id}/cleanup: delete the stored outputs of a workflow's steps.

The outputs are where the workers wrote them (gpu_consumers/storage.py): under the results store
(``RESULTS_URL``, ``S3_ENDPOINT_URL``: the workers' own settings, read once per API process), at
``<tenant segment>/<task id>/<attempt>/<name>``. A URL is deleted only when it lies below the
store's root, in the calling tenant's folder, in the folder of one of the workflow's own step
tasks: a result that names anything else (another tenant's output, a file outside the store, an
input the step was given) is left alone and reported, never followed. Deleting what is already
gone counts as deleted, so cleanup can be repeated.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from gpu_consumers.errors import StorageFailure
from gpu_consumers.storage import StorageSettings, file_url_path, open_store, s3_location, tenant_segment

_STATE_KEY = "workflow_storage_settings"


def storage_settings(app: Any) -> StorageSettings:
    """The results store's settings of this API process: read from the environment at first use
    and kept on the app (a test or an embedding sets ``app.state.workflow_storage_settings``)."""
    settings = getattr(app.state, _STATE_KEY, None)
    if settings is None:
        settings = StorageSettings()
        setattr(app.state, _STATE_KEY, settings)
    return settings


def result_urls(result: dict[str, Any] | None) -> list[str]:
    """The stored URLs a task result names, each once."""
    if not result:
        return []
    urls = [result.get("result_image_url"), result.get("result_video_url"),
            *(result.get("output_urls") or [])]
    return list(dict.fromkeys(u for u in urls if isinstance(u, str) and u))


def _relative_parts(settings: StorageSettings, url: str) -> list[str] | None:
    """The key's parts below the store's root (``[tenant, task_id, attempt, name]``), or None
    when ``url`` is not inside this store."""
    root = urlsplit(settings.results_url)
    if root.scheme == "file" and url.startswith("file:"):
        base = file_url_path(settings.results_url).resolve()
        try:
            path = file_url_path(url).resolve()
        except ValueError:
            return None
        return list(path.relative_to(base).parts) if path.is_relative_to(base) else None
    if root.scheme == "s3" and url.startswith("s3://"):
        bucket, prefix = s3_location(settings.results_url)
        got_bucket, _, key = url.removeprefix("s3://").partition("/")
        parts = key.split("/")
        if got_bucket.lower() != bucket or ".." in parts or "" in parts:
            return None
        if prefix:
            head = prefix.split("/")
            if parts[:len(head)] != head:
                return None
            parts = parts[len(head):]
        return parts
    return None


def cleanup_outputs(settings: StorageSettings, tenant_id: str, steps: list[dict[str, Any]]
                    ) -> tuple[list[str], list[dict[str, str]]]:
    """Delete the outputs the ``steps`` rows' results name; (deleted URLs, [{url, reason}] of
    those left alone). Blocking (S3). Raises StorageFailure when the store cannot be reached."""
    store = None
    deleted: list[str] = []
    refused: list[dict[str, str]] = []
    segment = tenant_segment(tenant_id)
    for step in steps:
        task_id = None if step.get("task_id") is None else str(step["task_id"])
        for url in result_urls(step.get("result")):
            parts = _relative_parts(settings, url)
            if parts is None:
                refused.append({"url": url, "reason": "not in the results store"})
                continue
            if len(parts) < 3 or parts[0] != segment or parts[1] != task_id:
                refused.append({"url": url, "reason": "not an output of this workflow's step "
                                                      f"{step['step_id']} (its tenant's task folder)"})
                continue
            if store is None:
                store = open_store(settings.results_url, settings.s3_endpoint_url, fsync=False)
            try:
                store.delete(url)
            except StorageFailure as exc:
                refused.append({"url": url, "reason": str(exc)[:300]})
                continue
            deleted.append(url)
    return deleted, refused
