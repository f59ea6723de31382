"""Webhook payload formats of a task's status change: ``native`` and ``compat`` (issue 17).

``native`` is this server's own payload (:func:`projection.webhooks.payload`: ``type``,
``error.code``, progress 0..1). ``compat`` is exactly the field list of the backend webhook of
the system this server replaces, so that its receivers keep working unchanged:

    event_type, task_id, task_type, status, progress, error_message, error_category, entity_id,
    origin_instance, origin_zone, origin_version, timestamp, started_at, completed_at, metadata

The format is chosen per deployment (``PayloadFormats.default``,
``COMPUTE_WEBHOOK_PAYLOAD_FORMAT``) and per origin: the task's ``origin_instance`` (its
submitter's, from the read model) looked up in ``PayloadFormats.by_origin``
(``COMPUTE_WEBHOOK_ORIGIN_FORMATS``, a JSON object ``{"<origin_instance>": "compat"}``). Only
task deliveries have two formats; generations and workflows are always native. Signing, the
event id header and delivery are the same for both (projection/webhooks.py). docs/API.md,
"Webhooks", documents every compat field; the choices are in docs/DECISIONS.md.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from projection.db.projection import Transition
from schemas.enums import ErrorCode, TaskStatus

NATIVE, COMPAT = "native", "compat"
FORMATS = (NATIVE, COMPAT)

# The backend's error_category of each of the seed's error codes (the code itself is in
# metadata.error_code): what kind of thing went wrong, the level its receivers branch on.
ERROR_CATEGORIES: Mapping[ErrorCode, str] = MappingProxyType({
    ErrorCode.PROVIDER_TIMEOUT: "timeout",
    ErrorCode.PROVIDER_ERROR: "provider",
    ErrorCode.INVALID_INPUT: "validation",
    ErrorCode.CONTENT_POLICY: "content_policy",
    ErrorCode.STORAGE_ERROR: "storage",
})
# event_type of each status: "task." + the status in lower case (the seed's output examples
# write statuses in lower case, as the backend did).
EVENT_TYPES: Mapping[TaskStatus, str] = MappingProxyType({s: f"task.{s.value.lower()}" for s in TaskStatus})
# Statuses whose compat payload carries the error: the end (FAILED) and a retry's QUEUED, which
# shows the error the next attempt follows.
_WITH_ERROR = frozenset({TaskStatus.FAILED, TaskStatus.QUEUED})
# The result's fields copied into metadata when COMPLETED (besides its own metadata record).
_RESULT_FIELDS = ("result_image_url", "result_video_url", "result_text", "output_urls", "seed")


@dataclass(frozen=True)
class PayloadFormats:
    """Which payload format a task's deliveries use: ``by_origin[origin_instance]``, else
    ``default``."""

    default: str = NATIVE
    by_origin: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for where, value in [("default", self.default), *self.by_origin.items()]:
            if value not in FORMATS:
                raise ValueError(f"webhook payload format for {where!r}: {value!r} is not one of {', '.join(FORMATS)}")
        if any(not isinstance(k, str) or not k for k in self.by_origin):
            raise ValueError("webhook payload formats by origin: an origin_instance must be non-empty text")
        object.__setattr__(self, "by_origin", MappingProxyType(dict(self.by_origin)))

    def for_origin(self, origin_instance: str | None) -> str:
        if origin_instance is not None:
            return self.by_origin.get(origin_instance, self.default)
        return self.default


def payload_formats_from_env(env: Mapping[str, str] | None = None) -> PayloadFormats:
    """``COMPUTE_WEBHOOK_PAYLOAD_FORMAT`` (``native``, the default, or ``compat``) and
    ``COMPUTE_WEBHOOK_ORIGIN_FORMATS`` (a JSON object ``{"<origin_instance>": "<format>"}``).
    Raises ValueError on a malformed value."""
    env = os.environ if env is None else env
    default = env.get("COMPUTE_WEBHOOK_PAYLOAD_FORMAT", "").strip().lower() or NATIVE
    raw = env.get("COMPUTE_WEBHOOK_ORIGIN_FORMATS", "").strip()
    by_origin: dict[str, str] = {}
    if raw:
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"COMPUTE_WEBHOOK_ORIGIN_FORMATS is not JSON: {exc}") from exc
        if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
            raise ValueError("COMPUTE_WEBHOOK_ORIGIN_FORMATS must be a JSON object of origin_instance"
                             " -> format (native or compat)")
        by_origin = {k: v.strip().lower() for k, v in parsed.items()}
    return PayloadFormats(default=default, by_origin=by_origin)


def compat_progress(status: TaskStatus, progress: float) -> int:
    """Progress as the backend sent it: a whole percentage 0..100. Rounded down, so that 100
    means COMPLETED and nothing else (99.6 % done is 99)."""
    if status is TaskStatus.COMPLETED:
        return 100
    return max(0, min(99, math.floor(progress * 100 + 1e-9)))


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def compat_payload(t: Transition) -> dict[str, Any]:
    """The compat payload of one status change (every field always present, null when unknown)."""
    s, row = t.after, t.row
    code = s.error_code if s.status in _WITH_ERROR else None
    metadata: dict[str, Any] = {"attempt": s.attempt, "event_id": s.last_event_id, "message": s.message}
    if row.get("generation_id") is not None:
        metadata["generation_id"] = str(row["generation_id"])
    if code is not None:
        metadata["error_code"] = code.value
    if s.status is TaskStatus.COMPLETED and isinstance(s.result, Mapping):
        result: Mapping[str, Any] = s.result
        metadata.update({k: result[k] for k in _RESULT_FIELDS if result.get(k) not in (None, [])})
        own = result.get("metadata")
        if isinstance(own, Mapping):
            metadata.update({k: v for k, v in own.items() if v is not None})
    return {
        "event_type": EVENT_TYPES[s.status],
        "task_id": s.task_id,
        "task_type": None if s.task_type is None else s.task_type.value,
        "status": s.status.value.lower(),
        "progress": compat_progress(s.status, s.progress),
        "error_message": None if code is None else s.error_message,
        "error_category": None if code is None else ERROR_CATEGORIES[code],
        "entity_id": row.get("entity_id"),
        "origin_instance": row.get("origin_instance"),
        "origin_zone": row.get("origin_zone"),
        "origin_version": row.get("origin_version"),
        "timestamp": _iso(s.updated_at),
        "started_at": _iso(s.started_at),
        "completed_at": _iso(s.completed_at),
        "metadata": metadata,
    }
