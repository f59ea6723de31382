"""The version-guarded replace of a whole document's rows: what the generations' and the
workflows' projections (generation_projection.py, workflow_projection.py) both do.

A compacted state topic carries each entity's whole document with a ``version`` that grows by
one per change, so projecting one record is a replace of the entity's rows, guarded by the
version (the tasks' events, folded one by one, are projection.py's business, not this):

* the parent row (``generations``, ``workflows``) is upserted only over a lower version
  (``WHERE <table>.version < EXCLUDED.version``): a duplicate, a replay or an older record never
  regresses it, whoever writes;
* its child rows are deleted and re-inserted from the winning record in the same transaction,
  so they always match the parent row's version;
* within a batch only the highest version of each entity is written (on a tie, the first seen:
  the same rule as "stored row wins a tie" across batches);
* per-entity advisory locks, taken in sorted order, keep two projectors of one group (during a
  rebalance) from interleaving or deadlocking.

It also reports the status changes it wrote (for webhooks): for each entity written, the
records of the batch newer than the stored row, walked in version order, each whose status
differs from the one before it (the stored row's, or none for an entity not seen yet).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, TypeVar

import psycopg

from projection.db.pg_values import jsonb, without_nul
from projection.db.projection import NOTIFY_CHANNEL, notify_payload


class VersionedRecord(Protocol):
    """A state topic's document: its ``version`` orders it, its ``status`` is reported."""

    @property
    def version(self) -> int: ...

    @property
    def status(self) -> Enum: ...


R = TypeVar("R", bound=VersionedRecord)
C = TypeVar("C")


def insert_sql(table: str, columns: Sequence[str]) -> str:
    return (f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join(['%s'] * len(columns))})")


@dataclass(frozen=True)
class ChildTable:
    """Rows of an entity replaced with it: ``attr`` names them on the rows object. ``cleared``:
    deleted by the parent's key before the insert; False for a table whose rows go with another
    child's row (``ON DELETE CASCADE``, e.g. ``shot_attempts`` with ``orchestrated_shots``)."""

    table: str
    columns: tuple[str, ...]
    attr: str
    cleared: bool = True


@dataclass(frozen=True)
class VersionedTable:
    """One entity's tables: the parent ``table`` (primary key ``columns[0]``, a uuid, with a
    ``version`` and a ``status`` column), its row as attribute ``row_attr`` of the rows object,
    its ``children`` in insert order, the columns written as JSONB, the advisory-lock hash seed
    (apart from every other entity's, so ids never share a lock)."""

    table: str
    columns: tuple[str, ...]
    row_attr: str
    children: tuple[ChildTable, ...]
    json_columns: frozenset[str]
    lock_seed: int

    @property
    def key(self) -> str:
        return self.columns[0]

    def upsert_sql(self) -> str:
        return (insert_sql(self.table, self.columns)
                + f" ON CONFLICT ({self.key}) DO UPDATE SET "
                + ", ".join(f"{c} = EXCLUDED.{c}" for c in self.columns[1:])
                # The guard: a row only ever moves to a higher version.
                + f" WHERE {self.table}.version < EXCLUDED.version RETURNING {self.key}::text")

    def params(self, row: dict[str, Any], columns: Sequence[str]) -> tuple[Any, ...]:
        return tuple(jsonb(row[c]) if c in self.json_columns and row[c] is not None
                     else without_nul(row[c]) for c in columns)


def replace_by_version(conn: psycopg.Connection, spec: VersionedTable, records: Iterable[R],
                       key_of: Callable[[R], str], rows_of: Callable[[R], Any],
                       change: Callable[[str, str | None, str, int, R], C]
                       ) -> tuple[int, list[C]]:
    """Project ``records`` (in topic order) inside one transaction (a savepoint of the caller's,
    if one is open); return how many entities were written and their status changes, each
    ``change(key, before, after, version, record)``, in version order per entity."""
    # key -> version -> the first record of that version seen in the batch
    versions: dict[str, dict[int, R]] = {}
    for record in records:
        versions.setdefault(key_of(record), {}).setdefault(record.version, record)
    if not versions:
        return 0, []
    latest = {key: by_version[max(by_version)] for key, by_version in versions.items()}
    ids = sorted(latest)
    with conn.transaction():
        conn.execute(
            "SELECT count(pg_advisory_xact_lock(hashtextextended(x, %s)))"
            " FROM (SELECT unnest(%s::text[]) AS x ORDER BY 1) AS ids", (spec.lock_seed, ids))
        # By primary key one id at a time, as every read and delete below: with ``= ANY(ids)``
        # the plan kept from a small table (a fresh database) scans it whole (migration 0009).
        stored = {str(key): (version, status) for key, version, status in conn.execute(
            "SELECT r.* FROM unnest(%s::uuid[]) AS ids(id) CROSS JOIN LATERAL (SELECT"
            f" {spec.key}, version, status FROM {spec.table} WHERE {spec.key} = ids.id"
            " OFFSET 0) AS r", (ids,))}
        winners = [rows_of(latest[k]) for k in ids
                   if latest[k].version > stored.get(k, (-1, None))[0]]
        if not winners:
            return 0, []
        written: list[str] = []
        upsert = spec.upsert_sql()
        with conn.cursor() as cur:
            for rows in winners:  # RETURNING per row: the guard may still refuse one
                cur.execute(upsert, spec.params(getattr(rows, spec.row_attr), spec.columns))
                if cur.fetchone() is not None:
                    written.append(getattr(rows, spec.row_attr)[spec.key])
        if not written:
            return 0, []
        chosen = [r for r in winners if getattr(r, spec.row_attr)[spec.key] in set(written)]
        with conn.cursor() as cur:
            for child in spec.children:
                if child.cleared:
                    cur.executemany(f"DELETE FROM {child.table} WHERE {spec.key} = %s",
                                    [(k,) for k in written])
            for child in spec.children:
                values = [spec.params(row, child.columns) for rows in chosen
                          for row in getattr(rows, child.attr)]
                if values:
                    cur.executemany(insert_sql(child.table, child.columns), values)
        # Wakes the API's long polls of these entities (at commit; generation and workflow ids
        # never collide with task ids, so they share the tasks' channel).
        conn.execute("SELECT count(pg_notify(%s, x)) FROM unnest(%s::text[]) AS x",
                     (NOTIFY_CHANNEL, [notify_payload(k, latest[k].status.value) for k in written]))
    changes: list[C] = []
    for key in written:
        stored_version, status = stored.get(key, (-1, None))
        for version in sorted(v for v in versions[key] if v > stored_version):
            record = versions[key][version]
            if record.status.value != status:
                changes.append(change(key, status, record.status.value, version, record))
                status = record.status.value
    return len(written), changes
