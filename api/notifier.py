"""Wakes SSE streams and waiting reads when the projector writes events for their task, and
forgets cached API keys when one is revoked (PostgreSQL NOTIFY).

One LISTEN connection per API process; each stream waits on an asyncio.Event for its task id.
A notification carries the status the row has now (``projection.db.projection.notify_payload``): a
long poll waiting for the end is woken only by a status that may be one, not by every change,
and answers with the row that such a task notification carries, without reading it again.
Streams also re-read on a timer (``sse_poll_s``), so a lost notification or a listener that is
reconnecting only delays an update, never loses it: the events themselves are read from the
table by sequence number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import psycopg

from projection.db.apikeys import REVOKED_CHANNEL
from projection.db.projection import NOTIFY_CHANNEL, parse_notify_payload
from projection.db.queries import task_row_from_json

log = logging.getLogger("api.notifier")
T = TypeVar("T")
_RECONNECT_S = 1.0  # wait before re-opening a lost LISTEN connection


class Wakeup(asyncio.Event):
    """Set by a notification for the subscribed id; ``row``: the task row the last one carried
    (typed as ``projection.db.queries.get_task`` returns it), None when it carried none."""

    row: dict[str, Any] | None = None


class EventNotifier:
    def __init__(self, database_url: str,
                 on_key_revoked: Callable[[str | None], None] = lambda _: None) -> None:
        """``on_key_revoked(key_id)``: a key was revoked (None: any may have been, while the
        listener was not listening)."""
        self._url = database_url
        self._on_key_revoked = on_key_revoked
        # subject id -> {event: which notified statuses set it (None: all)}
        self._waiters: dict[str, dict[Wakeup, Callable[[str], bool] | None]] = defaultdict(dict)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def subscribe(self, subject_id: str,
                  wake_on: Callable[[str], bool] | None = None) -> Iterator[Wakeup]:
        """An event set when the projector notifies ``subject_id``: on every change, or with
        ``wake_on`` only when the notified status satisfies it (a notification without a
        status, or a reconnection, always sets it)."""
        event = Wakeup()
        self._waiters[subject_id][event] = wake_on
        try:
            yield event
        finally:
            waiters = self._waiters.get(subject_id)
            if waiters is not None:
                waiters.pop(event, None)
                if not waiters:
                    del self._waiters[subject_id]

    async def long_poll(self, subject_id: str, read: Callable[[], Awaitable[T | None]],
                        ended: Callable[[T], bool], wait_s: float, recheck_s: float, *,
                        may_end: Callable[[str], bool] | None = None,
                        accept: Callable[[dict[str, Any]], T | None] | None = None) -> T | None:
        """``read()`` until ``ended`` holds for what it returns or ``wait_s`` has passed; the
        last read either way (None: still unknown). Woken by the projector's NOTIFY of
        ``subject_id`` (a task or generation id) - only of a status for which ``may_end`` holds,
        when given - and re-reading every ``recheck_s`` in case a notification was lost.
        ``accept(row)``: what the task row a notification carried gives this caller, instead of
        a read (None: read). ``read`` should not hold a database connection between calls."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        # Subscribed before the first read: a change committed in between still wakes us.
        with self.subscribe(subject_id, may_end) as changed:
            notified: dict[str, Any] | None = None
            while True:
                changed.clear()
                row = accept(notified) if notified is not None and accept is not None else None
                if row is None:
                    row = await read()
                remaining = deadline - loop.time()
                if remaining <= 0 or (row is not None and ended(row)):
                    return row
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(remaining, recheck_s))
                notified, changed.row = changed.row, None

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}; LISTEN {REVOKED_CHANNEL}")
                    # Anything written or revoked while we were not listening:
                    self._wake_all()
                    self._on_key_revoked(None)
                    async for note in conn.notifies():
                        if note.channel == REVOKED_CHANNEL:
                            self._on_key_revoked(note.payload)
                            continue
                        notice = parse_notify_payload(note.payload)
                        waiters = self._waiters.get(notice.subject_id)
                        if not waiters:
                            continue
                        row = None if notice.row is None else self._row(notice.row, conn)
                        for event, wake_on in waiters.items():
                            if wake_on is None or notice.status is None or wake_on(notice.status):
                                event.row = row
                                event.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
                await asyncio.sleep(_RECONNECT_S)

    @staticmethod
    def _row(doc: str, conn: psycopg.AsyncConnection) -> dict[str, Any] | None:
        try:  # typed in the session's time zone, as the API's reads (same database) get it
            return task_row_from_json(doc, conn.info.timezone)
        except (ValueError, KeyError, TypeError) as exc:  # then it is read instead
            log.warning("unreadable row in a notification (%s): %.200s", exc, doc)
            return None

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()
