"""The catalog of subjects, products and styles in PostgreSQL (psycopg 3), the store of record
of :mod:`generations.catalog`. Its tables belong to the read model's migrations
(``projection/db/migrations/0003_catalog.sql``): run ``computectl db migrate`` first."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from generations.catalog import CatalogEntry, CatalogError, CatalogKind, NamedCatalog, UnknownCatalogEntry, entry_weight, valid_entry_id

if TYPE_CHECKING:
    import psycopg


class PostgresCatalog(NamedCatalog):
    """The catalog in PostgreSQL (psycopg 3); one short connection per call."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        import psycopg

        try:
            conn = psycopg.connect(self._url, autocommit=True)
        except psycopg.OperationalError as exc:
            raise CatalogError(f"cannot reach the catalog database: {exc}; check DATABASE_URL") from exc
        if cast(tuple[Any, ...], conn.execute("SELECT to_regclass('subjects')").fetchone())[0] is None:
            conn.close()
            raise CatalogError("the catalog tables are missing: run `computectl db migrate` first")
        return conn

    def get(self, kind: CatalogKind, entry_id: str) -> CatalogEntry:
        valid = valid_entry_id(entry_id)
        row = None
        if valid is not None:
            with self._connect() as conn:
                row = conn.execute(f"SELECT {_COLUMNS} FROM {kind.table} WHERE id = %s", (valid,)).fetchone()
        if row is None:
            raise UnknownCatalogEntry([(kind, str(entry_id))])
        return _entry(kind, row)

    def add(self, kind: CatalogKind, name: str, lora_ref: str | None, default_weight: float | None,
            entry_id: str | None = None, reference_urls: Sequence[str] = ()) -> CatalogEntry:
        import psycopg

        entry = CatalogEntry(entry_id or str(uuid.uuid4()), kind, name, lora_ref, entry_weight(default_weight),
                             reference_urls=tuple(reference_urls))
        with self._connect() as conn:
            try:
                created = cast(tuple[Any, ...], conn.execute(
                    f"INSERT INTO {kind.table} (id, name, lora_ref, default_weight, reference_urls) "
                    f"VALUES (%s, %s, %s, %s, %s) RETURNING created_at",
                    (entry.id, entry.name, entry.lora_ref, entry.default_weight,
                     list(entry.reference_urls))).fetchone())[0]
            except psycopg.errors.UniqueViolation:
                raise CatalogError(f"{kind.value} {entry.id} already exists") from None
        return CatalogEntry(entry.id, kind, entry.name, entry.lora_ref, entry.default_weight, created,
                            entry.reference_urls)

    def list(self, kind: CatalogKind) -> list[CatalogEntry]:
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM {kind.table} ORDER BY created_at, id").fetchall()
        return [_entry(kind, r) for r in rows]


# reference_urls: migration 0013 (NOT NULL, default empty).
_COLUMNS = "id, name, lora_ref, default_weight, created_at, reference_urls"


def _entry(kind: CatalogKind, row: tuple[Any, ...]) -> CatalogEntry:
    return CatalogEntry(str(row[0]), kind, row[1], row[2], row[3], row[4], tuple(row[5]))
