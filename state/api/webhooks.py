"""Webhooks: each status change of a task with a ``webhook_url`` is POSTed there, signed.

The projector feeds :meth:`WebhookDispatcher.on_batch` with the transitions of each committed
batch. A delivery is a JSON POST with

    X-Compute-Event-Id   the status event's id (receivers deduplicate on it)
    X-Compute-Signature  t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

Deliveries of one task are sent in order, one at a time. 2xx is success; a network error, 408, 429 or 5xx is retried with exponential backoff up to
``max_attempts``; another 4xx or a forbidden address is final. Every attempt is a row of
``webhook_deliveries``. Addresses follow the input-URL rules: no loopback, private, link-local,
multicast or otherwise non-public address unless ``allow_private_networks``.

Delivery is best effort across restarts: pending retries live in memory (a projector that
stops loses them; the deliveries table shows the last attempt).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from schemas.address_policy import forbidden_reason
from state.db.projection import BatchResult, Transition

log = logging.getLogger("state.webhooks")

SIGNATURE_HEADER = "X-Compute-Signature"
EVENT_ID_HEADER = "X-Compute-Event-Id"
_RETRY_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class WebhookSettings:
    secret: str
    # Five attempts over about half a minute: a receiver restarting is covered, a dead one is
    # given up on before the next status change of the same task.
    max_attempts: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    # A receiver must answer quickly; slow ones would hold a delivery thread.
    timeout_s: float = 5.0
    allow_private_networks: bool = False
    threads: int = 4


def webhook_settings_from_env(env: dict[str, str] | None = None) -> WebhookSettings | None:
    """``COMPUTE_WEBHOOK_SECRET`` (unset: no webhooks) and
    ``COMPUTE_WEBHOOK_ALLOW_PRIVATE_NETWORKS`` (``true`` for a laptop or a private cluster)."""
    import os

    env = dict(os.environ) if env is None else env
    secret = env.get("COMPUTE_WEBHOOK_SECRET")
    if not secret:
        return None
    allow = env.get("COMPUTE_WEBHOOK_ALLOW_PRIVATE_NETWORKS", "").lower() in ("1", "true", "yes")
    return WebhookSettings(secret=secret, allow_private_networks=allow)


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


def address_problem(url: str, allow_private: bool) -> str | None:
    """None when ``url`` may be called, else why not."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return f"not an http(s) URL: {url[:100]}"
    if allow_private:
        return None
    try:
        infos = socket.getaddrinfo(parsed.hostname, parsed.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"cannot resolve {parsed.hostname}: {exc}"
    for info in infos:
        reason = forbidden_reason(ipaddress.ip_address(info[4][0]))
        if reason:
            return f"{parsed.hostname} resolves to a {reason}"
    return None


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    task_id: str = field(compare=False)
    event_id: str = field(compare=False)
    url: str = field(compare=False)
    body: bytes = field(compare=False)
    attempt: int = field(default=1, compare=False)


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


class WebhookDispatcher:
    def __init__(self, database_url: str, settings: WebhookSettings) -> None:
        self._url = database_url
        self.settings = settings
        self._heap: list[_Delivery] = []
        self._cond = threading.Condition()
        self._seq = 0
        self._busy = 0
        # Deliveries of one task go out in order: while one is queued or in flight, the task's
        # later ones wait here (a task id is present while it has one in the heap or in flight).
        self._per_task: dict[str, deque[_Delivery]] = {}
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"webhooks-{i}", daemon=True)
                         for i in range(settings.threads)]
        for thread in self._threads:
            thread.start()

    def on_batch(self, result: BatchResult) -> None:
        """Queue a delivery for each status change (not progress-only) of a task with a URL."""
        for t in result.transitions:
            url = t.row.get("webhook_url")
            before = t.before
            if not url or (before is not None and (before.status, before.attempt)
                           == (t.after.status, t.after.attempt)):
                continue
            body = json.dumps(payload(t), separators=(",", ":")).encode()
            delivery = _Delivery(time.monotonic(), 0, t.task_id, t.after.last_event_id, url, body)
            with self._cond:
                waiting = self._per_task.get(t.task_id)
                if waiting is not None:  # one in flight or queued for this task: keep order
                    waiting.append(delivery)
                    continue
                self._per_task[t.task_id] = deque()
            self._push(delivery)

    def wait_idle(self, timeout_s: float) -> bool:
        """True once nothing is queued or in flight (for tests and shutdown)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._heap or self._busy or self._per_task:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout_s)

    def _next_of(self, task_id: str) -> None:
        """The task's head delivery is done: queue its next one, if any."""
        with self._cond:
            waiting = self._per_task.get(task_id)
            if not waiting:
                self._per_task.pop(task_id, None)
                self._cond.notify_all()
                return
            following = waiting.popleft()
            following.due = time.monotonic()
        self._push(following)

    def _push(self, d: _Delivery) -> None:
        with self._cond:
            self._seq += 1
            d.seq = self._seq
            heapq.heappush(self._heap, d)
            self._cond.notify()

    def _next(self) -> _Delivery | None:
        with self._cond:
            while not self._stopping:
                if self._heap and self._heap[0].due <= time.monotonic():
                    self._busy += 1
                    return heapq.heappop(self._heap)
                wait = self._heap[0].due - time.monotonic() if self._heap else None
                self._cond.wait(wait)
            return None

    def _work(self) -> None:
        with httpx.Client(timeout=self.settings.timeout_s, follow_redirects=False,
                          trust_env=False) as client:
            conn: psycopg.Connection | None = None
            while (d := self._next()) is not None:
                try:
                    code, error, retry = self._attempt(client, d)
                    conn = self._record(conn, d, code, error)
                    if retry and d.attempt < self.settings.max_attempts:
                        delay = min(self.settings.backoff_base_s * 2 ** (d.attempt - 1),
                                    self.settings.backoff_max_s)
                        d.attempt += 1
                        d.due = time.monotonic() + delay
                        self._push(d)
                    else:
                        self._next_of(d.task_id)
                except Exception:  # a delivery thread never dies
                    log.exception("webhook delivery to %s failed unexpectedly", d.url)
                    self._next_of(d.task_id)
                finally:
                    with self._cond:
                        self._busy -= 1
                        self._cond.notify_all()
            if conn is not None:
                conn.close()

    def _attempt(self, client: httpx.Client, d: _Delivery) -> tuple[int | None, str | None, bool]:
        """(status code, error, retryable) of one POST."""
        problem = address_problem(d.url, self.settings.allow_private_networks)
        if problem:
            return None, f"refused: {problem}", False
        headers = {"Content-Type": "application/json", EVENT_ID_HEADER: d.event_id,
                   SIGNATURE_HEADER: sign(self.settings.secret, int(time.time()), d.body),
                   "User-Agent": "compute-server-webhooks/1"}
        try:
            resp = client.post(d.url, content=d.body, headers=headers)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500], True
        if 200 <= resp.status_code < 300:
            return resp.status_code, None, False
        retry = resp.status_code >= 500 or resp.status_code in _RETRY_STATUSES
        return resp.status_code, f"HTTP {resp.status_code}", retry

    def _record(self, conn: psycopg.Connection | None, d: _Delivery, code: int | None,
                error: str | None) -> psycopg.Connection | None:
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(self._url, autocommit=True)
            conn.execute(
                "INSERT INTO webhook_deliveries (task_id, event_id, url, attempt, status_code, error)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (d.task_id, d.event_id, d.url, d.attempt, code, error))
        except psycopg.Error as exc:
            log.warning("could not record a webhook delivery of task %s: %s", d.task_id, exc)
            if conn is not None:
                conn.close()
            return None
        return conn
