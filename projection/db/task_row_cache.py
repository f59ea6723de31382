"""The projector's memory of the task rows it wrote: the read a batch can skip.

Every batch the projector writes folds its events into the stored rows of its tasks, so it
starts by reading them (and which of the events are stored already): a round trip to PostgreSQL
it has to wait for before the writes and the commit can be sent. A task's next events nearly
always come to the same projector moments later (they are on its partitions), and the row is
then the one it has just written. :class:`TaskRowCache` keeps, per task, that row, the ids of
every event stored for the task, and the row's ``xmin`` (the transaction that wrote it).

A batch whose tasks are all remembered skips the read: its first statement,
``projection_claim`` (migration 0008), takes the tasks' advisory locks and raises
``serialization_failure`` if a row's ``xmin`` is not the remembered one (another projector after
a rebalance, a replay, a rebuild wrote it). The projector then forgets everything and writes the
batch again after reading the rows. A stale entry costs one retry, never a wrong row, which is
why nothing needs to invalidate entries on a rebalance. One round trip per batch instead of two
(docs/PERFORMANCE.md).

Entries are stored only after the batch's transaction committed (:meth:`PendingRows.entries`),
and a bounded number of tasks is kept, least recently used first out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg

# The tasks in flight are what needs remembering (a task's events come within its run). A row
# with its parameters and result is a few KB of Python objects: 5,000 of them, some tens of MB.
MAX_TASKS = 5_000


@dataclass(frozen=True, slots=True)
class CachedTask:
    row: dict[str, Any]  # the row as written (projection.db.projection.WRITE_COLUMNS)
    event_ids: frozenset[str]  # every task_events.event_id of the task
    xmin: str  # the row version's xmin, as text


class TaskRowCache:
    """Remembered rows by task id; one projector's, used from the thread that drives it."""

    def __init__(self, max_tasks: int = MAX_TASKS) -> None:
        self._max_tasks = max_tasks
        self._tasks: OrderedDict[str, CachedTask] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tasks)

    def lookup(self, task_ids: Iterable[str]) -> dict[str, CachedTask] | None:
        """Every one of ``task_ids``'s entries, or None if one of them is not remembered."""
        found: dict[str, CachedTask] = {}
        for task_id in task_ids:
            entry = self._tasks.get(task_id)
            if entry is None:
                return None
            found[task_id] = entry
        for task_id in found:
            self._tasks.move_to_end(task_id)
        return found

    def store(self, entries: dict[str, CachedTask]) -> None:
        for task_id, entry in entries.items():
            self._tasks[task_id] = entry
            self._tasks.move_to_end(task_id)
        while len(self._tasks) > self._max_tasks:
            self._tasks.popitem(last=False)

    def clear(self) -> None:
        self._tasks.clear()


@dataclass
class PendingRows:
    """A batch's rows as its transaction leaves them, to remember once it committed."""

    claim: psycopg.Cursor  # projection_claim's result: this transaction's id
    # By task id: the row as written or as it was; the batch's own copies, not changed after it.
    rows: dict[str, dict[str, Any]]
    event_ids: dict[str, frozenset[str]]
    xmins: dict[str, str]  # of the rows the batch read or remembered
    written: frozenset[str]  # the tasks whose row the batch wrote

    def entries(self) -> dict[str, CachedTask]:
        """The cache entries; call it only after the transaction committed (the claim's result
        is read then). A row neither read nor written (a batch of duplicates for a task the
        database does not hold) is left out: its xmin is unknown."""
        row = self.claim.fetchone()
        xid = None if row is None else row[0]
        entries: dict[str, CachedTask] = {}
        for task_id, task_row in self.rows.items():
            xmin = xid if task_id in self.written else self.xmins.get(task_id)
            if xmin is not None:
                entries[task_id] = CachedTask(task_row, self.event_ids[task_id], xmin)
        return entries
