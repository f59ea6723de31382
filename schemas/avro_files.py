"""The ``.avsc`` files: loading, self-contained expansion, fingerprints.

Each named type lives in its own file ``schemas/avro/<fullname>.avsc``; fastavro resolves the
references between them. :func:`schema_json` gives the self-contained form (every named type
inlined once, docs and defaults kept) that we register, publish and hand to other languages.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, cast

import fastavro
from fastavro.schema import fingerprint as _fingerprint
from fastavro.schema import load_schema, to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).parent / "avro"


@cache
def schema_json(avro_name: str) -> dict[str, Any]:
    """The self-contained schema of a top-level record, e.g. ``compute.events.StatusChanged``."""
    path = SCHEMA_DIR / f"{avro_name}.avsc"
    if not path.exists():
        raise FileNotFoundError(f"no Avro schema file {path.name} in {SCHEMA_DIR}")
    return cast(dict[str, Any], load_schema(str(path), _write_hint=False))


def parse(schema: dict[str, Any]) -> dict[str, Any]:
    """Parse a self-contained schema in isolation (its own named-type scope), so two versions
    of one record never clash."""
    return cast(dict[str, Any], fastavro.parse_schema(schema, named_schemas={}))


@cache
def parsed_schema(avro_name: str) -> dict[str, Any]:
    return parse(schema_json(avro_name))


def fingerprint(parsed: dict[str, Any]) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint (little-endian, as the single-object spec wants)."""
    return bytes.fromhex(_fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


def canonical_text(schema: dict[str, Any]) -> str:
    """The JSON text we store and register: stable key order, compact."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))
