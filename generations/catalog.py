"""The catalog of subjects, products and styles a GENERATE request refers to by id.

Each entry has a name (used in prompts), a LoRA reference (a model id or a path the workers'
model registry knows) and a default LoRA weight in 0..1 (what a GENERATION task of that entry
gets as ``subject_lora_weight`` / ``product_lora_weight`` / ``style_lora_weight``). Both may be
NULL in the database (an entry without a LoRA: its weight is left out of the task). Its
``reference_urls`` (up to 8 image URLs, none by default) show the subject or product: an EDITING
SUBJECT_SWAP / PRODUCT_ENHANCEMENT uses them when its request brings no reference of that kind.

The domain model and :class:`InMemoryCatalog` (for tests) are here; the store of record is
:class:`projection.db.catalog.PostgresCatalog` (tables in the read model's migrations), and
``computectl catalog add-subject|add-product|add-style|list`` (``cli/catalog.py``) edit and show it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from producers.errors import ProducerError


class CatalogKind(StrEnum):
    SUBJECT = "subject"
    PRODUCT = "product"
    STYLE = "style"

    @property
    def table(self) -> str:
        return f"{self.value}s"


# Reference images per entry: a few views of a subject or product; the worker uses one per task.
MAX_REFERENCE_URLS = 8
MAX_REFERENCE_URL_CHARS = 2000


def entry_weight(value: float | None) -> float | None:
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
    reference_urls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        object.__setattr__(self, "reference_urls", tuple(self.reference_urls))
        if len(self.reference_urls) > MAX_REFERENCE_URLS:
            problems.append(f"at most {MAX_REFERENCE_URLS} reference_urls, got {len(self.reference_urls)}")
        if any(not isinstance(u, str) or not u.strip() or len(u) > MAX_REFERENCE_URL_CHARS
               for u in self.reference_urls):
            problems.append(f"reference_urls must be non-blank URLs of at most {MAX_REFERENCE_URL_CHARS} characters")
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
            entry_id: str | None = None, reference_urls: Sequence[str] = ()) -> CatalogEntry: ...
    def list(self, kind: CatalogKind) -> list[CatalogEntry]: ...
    def get_subject(self, entry_id: str) -> CatalogEntry: ...
    def get_product(self, entry_id: str) -> CatalogEntry: ...
    def get_style(self, entry_id: str) -> CatalogEntry: ...
    def add_subject(self, name: str, lora_ref: str | None, default_weight: float | None, entry_id: str | None = None) -> CatalogEntry: ...
    def add_product(self, name: str, lora_ref: str | None, default_weight: float | None, entry_id: str | None = None) -> CatalogEntry: ...
    def add_style(self, name: str, lora_ref: str | None, default_weight: float | None, entry_id: str | None = None) -> CatalogEntry: ...


class NamedCatalog:
    """The per-kind conveniences of :class:`Catalog`, on top of ``get`` and ``add`` (the
    in-memory catalog here, the PostgreSQL one in ``projection/db/catalog.py``)."""

    def get(self, kind: CatalogKind, entry_id: str) -> CatalogEntry: raise NotImplementedError
    def add(self, kind: CatalogKind, name: str, lora_ref: str | None, default_weight: float | None,
            entry_id: str | None = None, reference_urls: Sequence[str] = ()) -> CatalogEntry: raise NotImplementedError

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


def valid_entry_id(entry_id: str) -> str | None:
    """The id in canonical UUID form, or None when it is no UUID (then no entry has it)."""
    try:
        return str(uuid.UUID(str(entry_id)))
    except ValueError:
        return None


class InMemoryCatalog(NamedCatalog):
    def __init__(self) -> None:
        self._entries: dict[tuple[CatalogKind, str], CatalogEntry] = {}

    def get(self, kind: CatalogKind, entry_id: str) -> CatalogEntry:
        entry = self._entries.get((kind, valid_entry_id(entry_id) or ""))
        if entry is None:
            raise UnknownCatalogEntry([(kind, str(entry_id))])
        return entry

    def add(self, kind: CatalogKind, name: str, lora_ref: str | None, default_weight: float | None,
            entry_id: str | None = None, reference_urls: Sequence[str] = ()) -> CatalogEntry:
        entry = CatalogEntry(entry_id or str(uuid.uuid4()), kind, name, lora_ref, entry_weight(default_weight),
                             reference_urls=tuple(reference_urls))
        if (kind, entry.id) in self._entries:
            raise CatalogError(f"{kind.value} {entry.id} already exists")
        self._entries[(kind, entry.id)] = entry
        return entry

    def list(self, kind: CatalogKind) -> list[CatalogEntry]:
        return [e for (k, _), e in self._entries.items() if k is kind]
