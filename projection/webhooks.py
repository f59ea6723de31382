"""Webhooks: each status change of a task or a generation is POSTed, signed, to its webhook URL
— durably.

A delivery has a subject: a task (``subject_kind`` ``task``), a generation (``generation``) or a
workflow (``workflow``).

Where a delivery goes: the subject's own ``webhook_url`` (a task's from its task-submitted event,
a generation's from its GenerationRecord) or, when it has none, the URL configured for the
subject's ``origin_instance`` (``WebhookSettings.origin_urls``, ``COMPUTE_WEBHOOK_ORIGIN_URLS``);
the subject's own URL always wins. Only status changes count: a task's new status or attempt
(progress-only reports are not sent); a generation's new status (RUNNING when first projected,
then COMPLETED / FAILED / CANCELLED; not every version of its record), event id
``uuid5(generation_id, status)``; a workflow's new status (CREATED, RUNNING, PAUSED, RUNNING
again, then COMPLETED / FAILED / CANCELLED), event id ``uuid5(workflow_id, "<status>:<version>")``
(a workflow can be RUNNING twice). The task of a workflow step whose workflow has
``suppress_subtask_events`` (its orchestration's ``suppress_events``) sends none: only its
workflow's changes are sent.

Durability (a transactional outbox): the projector calls :func:`enqueue` inside the transaction
of the projection batch that produced the status changes (task and generation rows alike), so
each (subject, status event) delivery is a ``webhook_outbox`` row that commits with the batch or
not at all: a crash can neither lose a delivery nor invent one, and a replayed batch queues
nothing twice (``UNIQUE (subject_kind, subject_id, event_id)``). The delivery threads
(projection/webhook_delivery.py) claim each due row under a row lock, send it, and record the
attempt in the claim's transaction. A process that dies mid-POST releases its lock; the row is
sent again (at least once: receivers deduplicate on the event id).
Pending retries survive restarts: their next attempt time is stored.

A delivery is a JSON POST with

    X-Compute-Event-Id   the status event's id (receivers deduplicate on it)
    X-Compute-Signature  t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

Deliveries of one subject are sent in order, one at a time: a row is claimable only while no
earlier row of its subject is pending (a retry waiting for its backoff holds the subject's later
changes back). 2xx is success; a network error, 408, 429 or 5xx is retried with exponential
backoff up to ``max_attempts``; another 4xx or a forbidden address is final. Addresses follow
the input-URL rules: no loopback, private, link-local, multicast or otherwise non-public address
unless ``allow_private_networks``; they are checked at each attempt (DNS may change).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import socket
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import psycopg

from projection.db.generation_projection import GenerationChange
from projection.db.projection import BatchResult, Transition, flatten
from projection.db.workflow_projection import WorkflowChange
from projection.webhook_formats import COMPAT, PayloadFormats, compat_payload, payload_formats_from_env
from schemas.address_policy import forbidden_reason
from schemas.events import StatusChanged
from state.lifecycle import fold

SIGNATURE_HEADER = "X-Compute-Signature"
EVENT_ID_HEADER = "X-Compute-Event-Id"

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
TASK, GENERATION, WORKFLOW = "task", "generation", "workflow"  # webhook_outbox.subject_kind


@dataclass(frozen=True)
class WebhookSettings:
    secret: str
    # Five attempts over about half a minute: a receiver restarting is covered, a dead one is
    # given up on before it holds a subject's later changes back for long.
    max_attempts: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    # A receiver must answer quickly; slow ones would hold a delivery thread (and its row lock).
    timeout_s: float = 5.0
    allow_private_networks: bool = False
    threads: int = 4
    # origin_instance -> URL, for tasks and generations that carry no webhook_url of their own.
    origin_urls: Mapping[str, str] = field(default_factory=dict)
    # A task delivery's payload format, by deployment and by the task's origin_instance
    # (projection/webhook_formats.py: native, or the replaced backend's compat).
    formats: PayloadFormats = field(default_factory=PayloadFormats)
    # How often idle delivery threads look for due rows queued by other processes (a batch of
    # this process wakes them at once).
    poll_s: float = 1.0
    # Delivered and given-up outbox rows (they hold the bodies) are deleted this long after their
    # last attempt; webhook_deliveries keeps every attempt. A week covers any replay of the
    # projection (a replayed old event makes no new transition anyway: the version guard).
    retention_s: float = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        for instance, url in self.origin_urls.items():
            problem = _url_shape_problem(url)
            if not isinstance(instance, str) or not instance or problem:
                raise ValueError(f"origin webhook URL for {instance!r}: {problem or 'empty origin'}")
        object.__setattr__(self, "origin_urls", MappingProxyType(dict(self.origin_urls)))
        if self.max_attempts < 1 or self.threads < 1 or self.poll_s <= 0 or self.retention_s < 0:
            raise ValueError("max_attempts and threads must be >= 1, poll_s > 0, retention_s >= 0")


def webhook_settings_from_env(env: Mapping[str, str] | None = None) -> WebhookSettings | None:
    """``COMPUTE_WEBHOOK_SECRET`` (unset: no webhooks), ``COMPUTE_WEBHOOK_ALLOW_PRIVATE_NETWORKS``
    (``true`` for a laptop or a private cluster), ``COMPUTE_WEBHOOK_ORIGIN_URLS`` (a JSON
    object ``{"<origin_instance>": "<url>", ...}``) and the payload formats
    (``COMPUTE_WEBHOOK_PAYLOAD_FORMAT``, ``COMPUTE_WEBHOOK_ORIGIN_FORMATS``:
    projection/webhook_formats.py). Raises ValueError on a malformed value."""
    env = os.environ if env is None else env
    secret = env.get("COMPUTE_WEBHOOK_SECRET")
    if not secret:
        return None
    allow = env.get("COMPUTE_WEBHOOK_ALLOW_PRIVATE_NETWORKS", "").lower() in ("1", "true", "yes")
    raw = env.get("COMPUTE_WEBHOOK_ORIGIN_URLS", "").strip()
    origin_urls: dict[str, str] = {}
    if raw:
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"COMPUTE_WEBHOOK_ORIGIN_URLS is not JSON: {exc}") from exc
        if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
            raise ValueError("COMPUTE_WEBHOOK_ORIGIN_URLS must be a JSON object of origin_instance"
                             " -> URL strings")
        origin_urls = parsed
    return WebhookSettings(secret=secret, allow_private_networks=allow, origin_urls=origin_urls,
                           formats=payload_formats_from_env(env))


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: float = 300.0) -> bool:
    """For receivers (and tests): is ``header`` a fresh, valid signature of ``body``?"""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


def _url_shape_problem(url: Any) -> str | None:
    if not isinstance(url, str):
        return "not a string"
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return f"not an http(s) URL: {url[:100]}"
    return None


def address_problem(url: str, allow_private: bool) -> str | None:
    """None when ``url`` may be called, else why not."""
    problem = _url_shape_problem(url)
    if problem:
        return problem
    if allow_private:
        return None
    parsed = urllib.parse.urlsplit(url)
    try:
        infos = socket.getaddrinfo(parsed.hostname, parsed.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"cannot resolve {parsed.hostname}: {exc}"
    for info in infos:
        reason = forbidden_reason(ipaddress.ip_address(info[4][0]))
        if reason:
            return f"{parsed.hostname} resolves to a {reason}"
    return None


def payload(t: Transition) -> dict[str, Any]:
    s = t.after
    return {
        "type": "task.status_changed", "event_id": s.last_event_id, "task_id": s.task_id,
        "task_type": None if s.task_type is None else s.task_type.value,
        "status": s.status.value, "attempt": s.attempt, "progress": s.progress,
        "result": s.result, "message": s.message,
        "error": None if s.error_code is None else {"code": s.error_code.value,
                                                      "message": s.error_message},
        "occurred_at": s.updated_at.isoformat(),
    }


def generation_event_id(generation_id: str, status: str) -> str:
    """The stable event id of a generation's change to ``status``: the same whichever version
    of the record (or which projector, or a replay) reports it."""
    return str(uuid.uuid5(uuid.UUID(generation_id), status))


def generation_payload(c: GenerationChange) -> dict[str, Any]:
    r = c.record
    predictions = []
    for p in r.predictions:
        result = p.result or {}
        predictions.append({
            "index": p.index, "status": p.status.value, "task_id": p.task_id,
            "result_image_url": result.get("result_image_url"),
            "result_video_url": result.get("result_video_url"),
            "error": None if p.error_code is None else {"code": p.error_code,
                                                        "message": p.error_message},
        })
    return {
        "type": "generation.status_changed",
        "event_id": generation_event_id(c.generation_id, c.after),
        "generation_id": c.generation_id, "status": c.after, "version": c.version,
        "predictions": predictions, "occurred_at": r.updated_at.isoformat(),
    }


def generation_target_url(c: GenerationChange, settings: WebhookSettings) -> str | None:
    """Where a generation's deliveries go: its own URL (its record always carries it), else its
    origin instance's."""
    if c.record.webhook_url:
        return c.record.webhook_url
    instance = c.record.origin_instance
    return settings.origin_urls.get(instance) if instance else None


def workflow_event_id(workflow_id: str, status: str, version: int) -> str:
    """The stable event id of a workflow's change to ``status`` at ``version`` of its record
    (the same whichever projector, or a replay, reports it)."""
    return str(uuid.uuid5(uuid.UUID(workflow_id), f"{status}:{version}"))


def workflow_payload(c: WorkflowChange) -> dict[str, Any]:
    r = c.record
    steps = []
    for s in r.steps:
        result = s.result
        steps.append({
            "id": s.step_id, "task_type": s.task_type.value, "status": s.status.value,
            "task_id": s.task_id, "attempt": s.attempt,
            "result_image_url": None if result is None else result.result_image_url,
            "result_video_url": None if result is None else result.result_video_url,
            "error": None if s.error_code is None else {"code": s.error_code.value,
                                                        "message": s.error_message},
        })
    return {
        "type": "workflow.status_changed",
        "event_id": workflow_event_id(c.workflow_id, c.after, c.version),
        "workflow_id": c.workflow_id, "name": r.spec.name, "status": c.after,
        "previous_status": c.before, "version": c.version, "failed_step": r.failed_step,
        "message": r.message, "steps": steps, "occurred_at": r.updated_at.isoformat(),
    }


def workflow_target_url(c: WorkflowChange, settings: WebhookSettings) -> str | None:
    """Where a workflow's deliveries go: its own URL, else its origin instance's."""
    if c.record.webhook_url:
        return c.record.webhook_url
    return settings.origin_urls.get(c.record.spec.origin_instance)


def target_url(row: Mapping[str, Any], settings: WebhookSettings) -> str | None:
    """Where a task's deliveries go: its own URL, else its origin instance's (once its
    task-submitted event is projected, so that a task's own URL can never lose to it); nowhere
    for a step of a workflow with ``suppress_subtask_events``."""
    if (row.get("orchestration") or {}).get("suppress_events"):
        return None
    own = row.get("webhook_url")
    if own:
        return own
    instance = row.get("origin_instance")
    if not instance or row.get("submitted_event_id") is None:
        return None
    return settings.origin_urls.get(instance)


_ENQUEUE = (
    "INSERT INTO webhook_outbox (subject_kind, subject_id, event_id, url, body)"
    " VALUES (%s, %s, %s, %s, %s)"
    " ON CONFLICT (subject_kind, subject_id, event_id) DO NOTHING"
)


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def enqueue(conn: psycopg.Connection, result: BatchResult, settings: WebhookSettings) -> int:
    """Queue one outbox row per status change in ``result`` that has a target URL: its task
    ``transitions`` (and, for a task whose submitted event came after some of its statuses, those
    earlier changes first) and, for a :class:`~projection.db.generation_projection.ProjectedBatch`,
    its ``generation_changes`` and ``workflow_changes``. Call it inside the batch's transaction (the projector's
    ``in_transaction`` hook). Returns the rows given."""
    rows = []
    for c in getattr(result, "generation_changes", ()):
        url = generation_target_url(c, settings)
        if url is not None:
            rows.append((GENERATION, c.generation_id, generation_event_id(c.generation_id, c.after),
                         url, _json(generation_payload(c))))
    for w in getattr(result, "workflow_changes", ()):
        url = workflow_target_url(w, settings)
        if url is not None:
            rows.append((WORKFLOW, w.workflow_id, workflow_event_id(w.workflow_id, w.after, w.version),
                         url, _json(workflow_payload(w))))
    missed = [t for tid, row in result.late_submissions if target_url(row, settings)
              for t in _transitions_so_far(conn, tid, row)]
    for t in [*missed, *result.transitions]:  # a transition in both is queued once, in order
        before = t.before
        if before is not None and (before.status, before.attempt) == (t.after.status,
                                                                       t.after.attempt):
            continue  # progress only
        url = target_url(t.row, settings)
        if url is None:
            continue
        native = settings.formats.for_origin(t.row.get("origin_instance")) != COMPAT
        rows.append((TASK, t.task_id, t.after.last_event_id, url,
                     _json(payload(t) if native else compat_payload(t))))
    if rows:
        with conn.cursor() as cur:
            cur.executemany(_ENQUEUE, rows)
    return len(rows)


def _transitions_so_far(conn: psycopg.Connection, task_id: str, row: dict[str, Any]) -> list[Transition]:
    """The task's status changes from its event history (in the order the projector first saw
    them, as the live projection folded them): for a submission that came after them."""
    transitions, state = [], None
    for (doc,) in conn.execute("SELECT payload FROM task_events WHERE task_id = %s ORDER BY seq",
                               (task_id,)):
        after = fold(state, flatten(StatusChanged.model_validate(doc)))
        if after is not state:
            transitions.append(Transition(task_id, state, after, row))
        state = after
    return transitions
