"""Wakes SSE streams and waiting reads when the projector writes events for their task, and
forgets cached API keys when one is revoked (PostgreSQL NOTIFY).

One LISTEN connection per API process; each stream waits on an asyncio.Event for its task id.
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
from typing import TypeVar

import psycopg

from state.db.apikeys import REVOKED_CHANNEL
from state.db.projection import NOTIFY_CHANNEL

log = logging.getLogger("state.api.notifier")
T = TypeVar("T")
_RECONNECT_S = 1.0  # wait before re-opening a lost LISTEN connection


class EventNotifier:
    def __init__(self, database_url: str,
                 on_key_revoked: Callable[[str | None], None] = lambda _: None) -> None:
        """``on_key_revoked(key_id)``: a key was revoked (None: any may have been, while the
        listener was not listening)."""
        self._url = database_url
        self._on_key_revoked = on_key_revoked
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def subscribe(self, task_id: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._waiters[task_id].add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[task_id]

    async def long_poll(self, subject_id: str, read: Callable[[], Awaitable[T | None]],
                        ended: Callable[[T], bool], wait_s: float, recheck_s: float) -> T | None:
        """``read()`` until ``ended`` holds for what it returns or ``wait_s`` has passed; the
        last read either way (None: still unknown). Woken by the projector's NOTIFY of
        ``subject_id`` (a task or generation id), and re-reading every ``recheck_s`` in case a
        notification was lost. ``read`` should not hold a database connection between calls."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        # Subscribed before the first read: a change committed in between still wakes us.
        with self.subscribe(subject_id) as changed:
            while True:
                changed.clear()
                row = await read()
                remaining = deadline - loop.time()
                if remaining <= 0 or (row is not None and ended(row)):
                    return row
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(remaining, recheck_s))

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
                        for event in self._waiters.get(note.payload, ()):
                            event.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
                await asyncio.sleep(_RECONNECT_S)

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()
