"""The catalog of subjects, products and styles a GENERATE request refers to by id.

Each entry has a name (used in prompts), a LoRA reference (a model id or a path the workers'
model registry knows) and a default LoRA weight in 0..1 (what a GENERATION task of that entry
gets as ``subject_lora_weight`` / ``product_lora_weight`` / ``style_lora_weight``). Both may be
NULL in the database (an entry without a LoRA: its weight is left out of the task).

:class:`InMemoryCatalog` is for tests; :class:`PostgresCatalog` is the store of record. Its
tables belong to the read model's migrations (``projection/db/migrations/0003_catalog.sql``): run
``computectl db migrate`` first.
``computectl catalog add-subject|add-product|add-style|list`` edit and show it (:data:`catalog`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, cast

import click

if TYPE_CHECKING:
    import psycopg

from producers.errors import ProducerError


class CatalogKind(StrEnum):
    SUBJECT = "subject"
    PRODUCT = "product"
    STYLE = "style"

    @property
    def table(self) -> str:
        return f"{self.value}s"


def _weight(value: float | None) -> float | None:
    return None if value is None else float(value)


class CatalogError(ProducerError):
    """A catalog entry could not be stored or read; the message says which and why."""


class UnknownCatalogEntry(CatalogError):
    """A request names a subject, product or style the catalog does not hold. Nothing was
    produced; add the entry (``computectl catalog add-...``) or fix the id."""

    def __init__(self, missing: list[tuple[CatalogKind, str]]) -> None:
        self.missing = missing
        names = ", ".join(f"{kind.value} {entry_id}" for kind, entry_id in missing)
        super().__init__(f"unknown catalog entr{'y' if len(missing) == 1 else 'ies'}: {names}; "
                         f"add it with `computectl catalog add-{missing[0][0].value}` or fix the id")


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    kind: CatalogKind
    name: str
    lora_ref: str | None  # None: an entry without a LoRA (the migration allows it)
    default_weight: float | None
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        problems = []
        try:
            object.__setattr__(self, "id", str(uuid.UUID(str(self.id))))
        except ValueError:
            problems.append(f"id must be a UUID, got {self.id!r}")
        if not self.name.strip():
            problems.append("name must not be blank")
        if self.lora_ref is not None and not self.lora_ref.strip():
            problems.append("lora_ref must not be blank (a model id or a path)")
        if self.default_weight is not None and not 0.0 <= self.default_weight <= 1.0:
            problems.append(f"default_weight must lie in 0..1, got {self.default_weight}")
        if problems:
            raise CatalogError(f"invalid {self.kind.value}: " + "; ".join(problems))


class Catalog(Protocol):
    def get(self, kind: CatalogKind, entry_id: str) -> CatalogEntry: ...
    def add(self, kind: CatalogKind, name: str, lora_ref: str | None, default_weight: float | None,
            entry_id: str | None = None) -> CatalogEntry: ...
    def list(self, kind: CatalogKind) -> list[CatalogEntry]: ...
    def get_subject(self, entry_id: str) -> CatalogEntry: ...
    def get_product(self, entry_id: str) -> CatalogEntry: ...
    def get_style(self, entry_id: str) -> CatalogEntry: ...
    def add_subject(self, name: str, lora_ref: str | None, default_weight: float | None, entry_id: str | None = None) -> CatalogEntry: ...
    def add_product(self, name: str, lora_ref: str | None, default_weight: float | None, entry_id: str | None = None) -> CatalogEntry: ...
    def add_style(self, name: str, lora_ref: str | None, default_weight: float | None, entry_id: str | None = None) -> CatalogEntry: ...


class _Named:
    """The per-kind conveniences of :class:`Catalog`, on top of ``get`` and ``add``."""

    def get(self, kind: CatalogKind, entry_id: str) -> CatalogEntry: raise NotImplementedError
    def add(self, kind: CatalogKind, name: str, lora_ref: str | None, default_weight: float | None,
            entry_id: str | None = None) -> CatalogEntry: raise NotImplementedError

    def get_subject(self, entry_id: str) -> CatalogEntry:
        return self.get(CatalogKind.SUBJECT, entry_id)

    def get_product(self, entry_id: str) -> CatalogEntry:
        return self.get(CatalogKind.PRODUCT, entry_id)

    def get_style(self, entry_id: str) -> CatalogEntry:
        return self.get(CatalogKind.STYLE, entry_id)

    def add_subject(self, name: str, lora_ref: str | None, default_weight: float | None, entry_id: str | None = None) -> CatalogEntry:
        return self.add(CatalogKind.SUBJECT, name, lora_ref, default_weight, entry_id)

    def add_product(self, name: str, lora_ref: str | None, default_weight: float | None, entry_id: str | None = None) -> CatalogEntry:
        return self.add(CatalogKind.PRODUCT, name, lora_ref, default_weight, entry_id)

    def add_style(self, name: str, lora_ref: str | None, default_weight: float | None, entry_id: str | None = None) -> CatalogEntry:
        return self.add(CatalogKind.STYLE, name, lora_ref, default_weight, entry_id)


def _valid_id(entry_id: str) -> str | None:
    try:
        return str(uuid.UUID(str(entry_id)))
    except ValueError:
        return None


class InMemoryCatalog(_Named):
    def __init__(self) -> None:
        self._entries: dict[tuple[CatalogKind, str], CatalogEntry] = {}

    def get(self, kind: CatalogKind, entry_id: str) -> CatalogEntry:
        entry = self._entries.get((kind, _valid_id(entry_id) or ""))
        if entry is None:
            raise UnknownCatalogEntry([(kind, str(entry_id))])
        return entry

    def add(self, kind: CatalogKind, name: str, lora_ref: str | None, default_weight: float | None,
            entry_id: str | None = None) -> CatalogEntry:
        entry = CatalogEntry(entry_id or str(uuid.uuid4()), kind, name, lora_ref, _weight(default_weight))
        if (kind, entry.id) in self._entries:
            raise CatalogError(f"{kind.value} {entry.id} already exists")
        self._entries[(kind, entry.id)] = entry
        return entry

    def list(self, kind: CatalogKind) -> list[CatalogEntry]:
        return [e for (k, _), e in self._entries.items() if k is kind]


# --------------------------------------------------------------------------- PostgreSQL

class PostgresCatalog(_Named):
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
        valid = _valid_id(entry_id)
        row = None
        if valid is not None:
            with self._connect() as conn:
                row = conn.execute(f"SELECT id, name, lora_ref, default_weight, created_at "
                                   f"FROM {kind.table} WHERE id = %s", (valid,)).fetchone()
        if row is None:
            raise UnknownCatalogEntry([(kind, str(entry_id))])
        return CatalogEntry(str(row[0]), kind, row[1], row[2], row[3], row[4])

    def add(self, kind: CatalogKind, name: str, lora_ref: str | None, default_weight: float | None,
            entry_id: str | None = None) -> CatalogEntry:
        import psycopg

        entry = CatalogEntry(entry_id or str(uuid.uuid4()), kind, name, lora_ref, _weight(default_weight))
        with self._connect() as conn:
            try:
                created = cast(tuple[Any, ...], conn.execute(
                    f"INSERT INTO {kind.table} (id, name, lora_ref, default_weight) "
                    f"VALUES (%s, %s, %s, %s) RETURNING created_at",
                    (entry.id, entry.name, entry.lora_ref, entry.default_weight)).fetchone())[0]
            except psycopg.errors.UniqueViolation:
                raise CatalogError(f"{kind.value} {entry.id} already exists") from None
        return CatalogEntry(entry.id, kind, entry.name, entry.lora_ref, entry.default_weight, created)

    def list(self, kind: CatalogKind) -> list[CatalogEntry]:
        with self._connect() as conn:
            rows = conn.execute(f"SELECT id, name, lora_ref, default_weight, created_at "
                                f"FROM {kind.table} ORDER BY created_at, id").fetchall()
        return [CatalogEntry(str(r[0]), kind, r[1], r[2], r[3], r[4]) for r in rows]


# --------------------------------------------------------------------------- CLI

_database_url = click.option("--database-url", envvar="DATABASE_URL", required=True,
                             help="PostgreSQL URL of the catalog (default: $DATABASE_URL).")


@click.group()
def catalog() -> None:
    """The subjects, products and styles (LoRA and default weight) GENERATE requests use."""


def _add_command(kind: CatalogKind) -> click.Command:
    @click.command(f"add-{kind.value}", help=(
        f"Add a {kind.value} and print its id. Without --lora (or with --lora \"\") the entry has "
        "no LoRA. REF is a name under the workers' LoRA root (the offline profile ships demo/anna, "
        "demo/summer-dress and demo/studio-style) or, in production, an allowed hub repo."))
    @click.argument("name")
    @click.option("--lora", "lora_ref", metavar="REF", help="LoRA reference (default: none).")
    @click.option("--weight", "default_weight", type=click.FloatRange(0.0, 1.0),
                  help="Default LoRA weight, 0..1 (default: none, the worker's own).")
    @click.option("--id", "entry_id", help="Use this UUID instead of a new one.")
    @_database_url
    def add(name: str, lora_ref: str | None, default_weight: float | None, entry_id: str | None,
            database_url: str) -> None:
        lora_ref = (lora_ref or "").strip() or None  # "" is no LoRA, as leaving --lora out is
        entry = PostgresCatalog(database_url).add(kind, name, lora_ref, default_weight, entry_id)
        click.echo(entry.id)

    return add


for _kind in CatalogKind:
    catalog.add_command(_add_command(_kind))


@catalog.command("list")
@click.option("--kind", type=click.Choice([k.value for k in CatalogKind]), help="Only this kind.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_database_url
def list_entries(kind: str | None, as_json: bool, database_url: str) -> None:
    """List the catalog's entries."""
    store = PostgresCatalog(database_url)
    for k in [CatalogKind(kind)] if kind else list(CatalogKind):
        for entry in store.list(k):
            if as_json:
                click.echo(json.dumps({**asdict(entry), "kind": k.value}, default=str))
            else:
                weight = "-" if entry.default_weight is None else f"{entry.default_weight:.2f}"
                click.echo(f"{k.value:8} {entry.id}  {weight:>4}  {entry.name}  ({entry.lora_ref or 'no LoRA'})")
