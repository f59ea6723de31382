"""Webhook delivery: threads that send the outbox rows :func:`projection.webhooks.enqueue` queued.

:class:`WebhookDispatcher` threads, in any number of projector processes, claim due rows with
``SELECT ... FOR UPDATE SKIP LOCKED`` (a row is held by one thread of one process while it is
being POSTed), send it signed, record the attempt as a row of ``webhook_deliveries``, and
reschedule the row (exponential backoff) or mark it final, all in the claim's transaction. The
rules (what is sent where, signatures, addresses, ordering per subject) are described in
``projection/webhooks.py``.
"""

from __future__ import annotations

import logging
import threading
import time

import httpx
import psycopg

from projection.db.projection import BatchResult
from projection.webhooks import (
    DELIVERED,
    EVENT_ID_HEADER,
    FAILED,
    PENDING,
    SIGNATURE_HEADER,
    WebhookSettings,
    address_problem,
    enqueue,
    sign,
)

log = logging.getLogger("state.webhooks")

_RETRY_STATUSES = frozenset({408, 429})
_ERROR_MAX = 500  # characters of an error kept with a delivery attempt

# The due head of some subject's queue that no other thread holds: a row is a head while no
# earlier row of its subject is pending. Not-yet-due heads are returned too (wait_s > 0), so an
# idle thread knows how long it may sleep; the caller lets go of those at once.
_CLAIM = """
SELECT outbox_id, subject_kind, subject_id::text, event_id::text, url, body, attempts,
       greatest(extract(epoch FROM next_attempt_at - clock_timestamp()), 0)::float8 AS wait_s
  FROM webhook_outbox o
 WHERE state = 'pending'
   AND NOT EXISTS (SELECT 1 FROM webhook_outbox e
                    WHERE e.subject_kind = o.subject_kind AND e.subject_id = o.subject_id
                      AND e.state = 'pending'
                      AND e.outbox_id < o.outbox_id)
 ORDER BY next_attempt_at, outbox_id
 LIMIT 1
   FOR UPDATE SKIP LOCKED
"""
_RECORD = (
    "INSERT INTO webhook_deliveries (subject_kind, subject_id, event_id, url, attempt,"
    " status_code, error) VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
_PRUNE = ("DELETE FROM webhook_outbox WHERE state <> 'pending'"
          " AND updated_at < clock_timestamp() - make_interval(secs => %s)")
# How often one dispatcher deletes expired outbox rows (when a delivery thread is idle).
_PRUNE_EVERY_S = 600.0
_RESCHEDULE = (
    "UPDATE webhook_outbox SET state = %s, attempts = %s, last_status_code = %s, last_error = %s,"
    " next_attempt_at = clock_timestamp() + make_interval(secs => %s),"
    " updated_at = clock_timestamp() WHERE outbox_id = %s"
)


class WebhookDispatcher:
    """Delivery threads over the outbox. ``enqueue`` (in the batch transaction) queues,
    ``on_batch`` (after the commit) wakes the threads; ``stop`` ends them after their current
    attempt. Several dispatchers (processes) may share one database."""

    def __init__(self, database_url: str, settings: WebhookSettings) -> None:
        self._url = database_url
        self.settings = settings
        self._cond = threading.Condition()
        self._kicks = 0
        self._stopping = False
        self._pruned_at = -_PRUNE_EVERY_S  # the first idle thread prunes at once
        self._queued = 0  # rows the last enqueue() queued: on_batch wakes threads only for them
        self._threads = [threading.Thread(target=self._work, name=f"webhooks-{i}", daemon=True)
                         for i in range(settings.threads)]
        for thread in self._threads:
            thread.start()

    def enqueue(self, conn: psycopg.Connection, result: BatchResult) -> int:
        self._queued = enqueue(conn, result, self.settings)  # a retried batch calls it again
        return self._queued

    def on_batch(self, result: BatchResult) -> None:
        """A batch committed: wake as many threads as it queued deliveries (none for the usual
        batch, whose tasks have no webhook: each woken thread queries the outbox)."""
        queued, self._queued = self._queued, 0
        if queued:
            self.wake(queued)

    def wake(self, threads: int | None = None) -> None:
        """Wake ``threads`` delivery threads (None: all)."""
        with self._cond:
            self._kicks += 1
            if threads is None:
                self._cond.notify_all()
            else:
                self._cond.notify(threads)

    def wait_idle(self, timeout_s: float) -> bool:
        """True once no delivery is pending in the outbox (for tests and shutdown)."""
        deadline = time.monotonic() + timeout_s
        with psycopg.connect(self._url, autocommit=True) as conn:
            while conn.execute("SELECT EXISTS (SELECT 1 FROM webhook_outbox"
                               " WHERE state = 'pending')").fetchone()[0]:
                if time.monotonic() > deadline:
                    return False
                with self._cond:
                    self._cond.wait(0.05)
        return True

    def prune(self, conn: psycopg.Connection) -> int:
        """Delete the final outbox rows older than ``retention_s``; how many went."""
        return conn.execute(_PRUNE, (self.settings.retention_s,)).rowcount

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout_s)

    # -- delivery threads --------------------------------------------------------------------

    def _work(self) -> None:
        with httpx.Client(timeout=self.settings.timeout_s, follow_redirects=False,
                          trust_env=False) as client:
            conn: psycopg.Connection | None = None
            try:
                while True:
                    with self._cond:
                        if self._stopping:
                            return
                        seen = self._kicks
                    try:
                        if conn is None or conn.closed:
                            conn = psycopg.connect(self._url, autocommit=True)
                        wait_s = self._deliver_one(conn, client)
                        if wait_s > 0 and self._prune_due():
                            self.prune(conn)
                    except psycopg.Error as exc:  # the database is away: try again later
                        log.warning("webhook outbox unavailable: %s", exc)
                        if conn is not None:
                            conn.close()
                        conn, wait_s = None, self.settings.poll_s
                    except Exception:  # a delivery thread never dies
                        log.exception("webhook delivery thread failed unexpectedly")
                        wait_s = self.settings.poll_s
                    if wait_s <= 0:
                        continue
                    with self._cond:
                        if not self._stopping and self._kicks == seen:
                            self._cond.wait(wait_s)
            finally:
                if conn is not None:
                    conn.close()

    def _prune_due(self) -> bool:
        """True for one idle thread every _PRUNE_EVERY_S."""
        with self._cond:
            if time.monotonic() - self._pruned_at < _PRUNE_EVERY_S:
                return False
            self._pruned_at = time.monotonic()
            return True

    def _deliver_one(self, conn: psycopg.Connection, client: httpx.Client) -> float:
        """Claim, send, record and reschedule one due delivery; 0 when one was made, else how
        long to wait before looking again."""
        with conn.transaction():
            row = conn.execute(_CLAIM).fetchone()
            if row is None:
                return self.settings.poll_s
            outbox_id, kind, subject_id, event_id, url, body, attempts, wait_s = row
            if wait_s > 0:
                return min(wait_s, self.settings.poll_s)
            attempt = attempts + 1
            code, error, retry = self._attempt(client, url, event_id, bytes(body))
            conn.execute(_RECORD, (kind, subject_id, event_id, url, attempt, code, error))
            delay = 0.0
            if error is None:
                state = DELIVERED
            elif retry and attempt < self.settings.max_attempts:
                state = PENDING
                delay = min(self.settings.backoff_base_s * 2 ** (attempt - 1),
                            self.settings.backoff_max_s)
            else:
                state = FAILED
                log.warning("webhook delivery of %s %s event %s to %s given up after %d"
                            " attempt(s): %s", kind, subject_id, event_id, url, attempt, error)
            conn.execute(_RESCHEDULE, (state, attempt, code, error, delay, outbox_id))
        return 0.0

    def _attempt(self, client: httpx.Client, url: str, event_id: str,
                 body: bytes) -> tuple[int | None, str | None, bool]:
        """(status code, error, retryable) of one POST; error None means delivered."""
        problem = address_problem(url, self.settings.allow_private_networks)
        if problem:
            return None, f"refused: {problem}"[:_ERROR_MAX], False
        headers = {"Content-Type": "application/json", EVENT_ID_HEADER: event_id,
                   SIGNATURE_HEADER: sign(self.settings.secret, int(time.time()), body),
                   "User-Agent": "compute-server-webhooks/1"}
        try:
            resp = client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:_ERROR_MAX], True
        except Exception as exc:  # e.g. an URL httpx cannot use: final, not a stuck row
            return None, f"{type(exc).__name__}: {exc}"[:_ERROR_MAX], False
        if 200 <= resp.status_code < 300:
            return resp.status_code, None, False
        retry = resp.status_code >= 500 or resp.status_code in _RETRY_STATUSES
        return resp.status_code, f"HTTP {resp.status_code}", retry
