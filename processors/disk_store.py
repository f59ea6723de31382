"""The processors' tables on local disk (SQLite), so that a processor's memory does not grow
with the number of tasks it has seen. Faust's ``store`` setting ``disk://`` (the default).

Why not Faust's own stores: ``memory://`` holds every key and value in RAM — the ``tasks``
table keeps the state of every task ever seen (≈ 1 KB each), so a backlog of 100,000 tasks grew
the processors by ~100 MB (docs/PERFORMANCE.md, "Under load"); ``rocksdb://`` needs a native
library this project does not install, takes a write's partition from the stream's current
event (which a batch agent, ``stream.take_events``, does not set per record) and still keeps an
in-memory index of every key.

Semantics are the memory store's, only the bytes live on disk: the store is a cache of the
table's changelog topic. It says it persisted no offset (``persisted_offset`` is None), so Faust
rebuilds it from the changelog at every start and after every rebalance, exactly as with
``memory://``; its file is therefore private to the process (the name carries the pid: two
processors sharing a data directory never share a file), removed when the store stops, and a
file left by a process that died is removed by the next start in that directory. SQLite is the
Python standard library's: no journal and no fsync (the changelog is the durable copy), a page
cache of ``CACHE_MIB`` per table (the bound on its memory), one prepared statement per
operation.

Keys are the tables' ``str`` keys (task, generation or workflow ids) and values their ``bytes``
documents. Each row also records the partition of the changelog record it was recovered from, so
that ``on_recovery_completed`` drops the rows of partitions this process no longer holds; a key
first written live has none and is kept (both exactly the memory store's rules).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from faust.stores import base
from faust.types import TP, EventT

CACHE_MIB = 8
# Writes share a transaction, committed every this many: one statement per transaction costs
# about twice as much (nothing is fsynced either way; uncommitted rows are read back as usual).
WRITES_PER_TRANSACTION = 1000
_SUFFIX = ".sqlite3"
_LIVE = -1  # the partition column of a key first written live (not from the changelog)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_files(directory: Path) -> None:
    """Remove the files of stores whose process is gone (``<table>-<pid><suffix>``)."""
    for path in directory.glob(f"*{_SUFFIX}"):
        pid = path.name[: -len(_SUFFIX)].rpartition("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            path.unlink(missing_ok=True)


class DiskMap(MutableMapping[Any, Any]):
    """A ``str -> bytes`` mapping in one SQLite table, each row with the changelog partition it
    was recovered from (``_LIVE`` if none)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)  # a cache of the changelog: always rebuilt
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=MEMORY",
                       f"cache_size=-{CACHE_MIB * 1024}", "locking_mode=EXCLUSIVE"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, p INTEGER NOT NULL, v BLOB NOT NULL)"
                         " WITHOUT ROWID")
        self._db.execute("CREATE INDEX kv_p ON kv (p)")
        self._writes = 0  # in the open transaction, if any
        execute = self._db.execute
        self._select: Callable[[tuple[Any, ...]], Any] = (
            lambda args: execute("SELECT v FROM kv WHERE k = ?", args).fetchone())
        self._upsert = "INSERT OR REPLACE INTO kv (k, p, v) VALUES (?, ?, ?)"
        # A live write keeps the partition a recovered key had.
        self._set = (f"INSERT INTO kv (k, p, v) VALUES (?, {_LIVE}, ?) "
                     "ON CONFLICT (k) DO UPDATE SET v = excluded.v")

    # -- the mapping ----------------------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        row = self._select((key,))
        if row is None:
            raise KeyError(key)
        return row[0]

    def get(self, key: Any, default: Any = None) -> Any:
        row = self._select((key,))
        return default if row is None else row[0]

    def __contains__(self, key: object) -> bool:
        return self._select((key,)) is not None

    def __setitem__(self, key: Any, value: Any) -> None:
        if value is None:  # a tombstone, as the memory store's changelog rule: no row
            self.pop(key, None)
            return
        self._write(self._set, (key, value))

    def __delitem__(self, key: Any) -> None:
        if self._write("DELETE FROM kv WHERE k = ?", (key,)).rowcount == 0:
            raise KeyError(key)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM kv").fetchone()[0])

    def __iter__(self) -> Iterator[Any]:
        return (k for (k,) in self._db.execute("SELECT k FROM kv").fetchall())

    def clear(self) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM kv")

    # -- bulk ------------------------------------------------------------------------------

    def apply(self, rows: Iterable[tuple[Any, int, Any]]) -> None:
        """Changelog records ``(key, partition, value or None)`` in order, in one transaction."""
        latest: dict[Any, tuple[int, Any]] = {}
        for key, partition, value in rows:
            latest[key] = (partition, value)  # the last record of a key wins
        upserts = [(k, p, v) for k, (p, v) in latest.items() if v is not None]
        deletes = [(k,) for k, (_, v) in latest.items() if v is None]
        with self._transaction():
            self._db.executemany(self._upsert, upserts)
            self._db.executemany("DELETE FROM kv WHERE k = ?", deletes)

    def keep_partitions(self, partitions: set[int]) -> None:
        """Drop the recovered rows of every other partition (rows written live stay)."""
        marks = ",".join("?" * len(partitions))
        with self._transaction():
            self._db.execute(f"DELETE FROM kv WHERE p != {_LIVE} AND p NOT IN ({marks})",
                             tuple(partitions))

    def close(self) -> None:
        self._commit()
        self._db.close()
        self.path.unlink(missing_ok=True)

    def _write(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Cursor:
        if self._writes == 0:
            self._db.execute("BEGIN")
        self._writes += 1
        try:
            return self._db.execute(sql, args)
        finally:
            if self._writes >= WRITES_PER_TRANSACTION:
                self._commit()

    def _commit(self) -> None:
        if self._writes:
            self._writes = 0
            self._db.execute("COMMIT")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """A transaction of its own for a bulk change (the open one is committed first)."""
        self._commit()
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


class Store(base.Store[Any, Any]):
    """Faust's store interface over :class:`DiskMap` (``store="disk://"``; registered under that
    name through the ``faust.stores`` entry point in pyproject.toml)."""

    data: DiskMap

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # (Service.__init__ runs before app and table are set)
        directory = Path(self.app.conf.tabledir)
        directory.mkdir(parents=True, exist_ok=True)
        remove_stale_files(directory)
        path = directory / f"{self.table_name}-{os.getpid()}{_SUFFIX}"
        self.data = DiskMap(path)

    def apply_changelog_batch(self, batch: Iterable[EventT[Any]], to_key: Callable[[Any], Any],
                              to_value: Callable[[Any], Any]) -> None:
        self.data.apply(
            (to_key(event.key), event.message.partition,
             None if event.message.value is None else to_value(event.value))
            for event in batch)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        # The memory store's rule, by partition number: keep what this process is active for.
        self.data.keep_partitions({partition for _, partition in active_tps})

    def persisted_offset(self, tp: TP) -> int | None:
        return None  # nothing survives a restart: recover from the changelog, like memory://

    def reset_state(self) -> None:
        self.data.clear()

    async def on_stop(self) -> None:
        self.data.close()

    async def backup_partition(self, tp: TP | int, flush: bool = True, purge: bool = False,
                               keep: int = 1) -> None:
        return None

    def restore_backup(self, tp: TP | int, latest: bool = True, backup_id: int = 0) -> None:
        return None

    def _clear(self) -> None:
        self.data.clear()
