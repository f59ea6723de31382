"""Avro binary encoding of our models by code generated from the schema: no model_dump, no fastavro.

Writing an event with fastavro first builds a dict of dicts (``model_dump`` plus
:meth:`AvroRecord.to_avro`'s fix-ups), then walks the schema for every record, dispatching on
each field's type. :func:`compile_writer` walks the schema once and emits one Python function per
model: straight-line code, one block per field, reading the instance's attributes and appending
the encoded pieces to a list: byte-for-byte what ``fastavro.schemaless_writer(buf, parsed,
model.to_avro())`` writes. The source is kept as ``writer.__avro_source__`` and in :mod:`linecache`.

Supported: records, enums, string (plain, logicalType uuid or json), int, long (plain or
logicalType timestamp-micros), double, boolean, null, arrays, maps, and unions of null with one
other type. Anything else raises :class:`UnsupportedSchemaError` when compiling, not when writing.
"""

from __future__ import annotations

import enum
import json
import keyword
import linecache
import struct
import typing
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

# _dumps: the JSON encoder to_avro() uses for logicalType json (compact, ensure_ascii=False), so the
# text is identical; _strip: an annotation without Annotated[...] and Optional.
from schemas.records import AvroRecord, _dumps, _strip

__all__ = ["UnsupportedSchemaError", "compile_writer", "micros_varint", "split_template"]

Writer = Callable[..., bytes]
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # fastavro's epoch for timestamp-micros
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


class UnsupportedSchemaError(ValueError):
    """The schema uses a construct this writer does not generate code for."""


# Varints are built from 14-bit chunks (two bytes each), which keeps the Python loop short.
# _RAW14[u]: the varint of 0 <= u < 2**14; _CONT14[c]: chunk c as two bytes that both say "more
# follows". _ZZ = _RAW14[::2] is the zigzag varint of 0 <= n < 8192 (zigzag(n) = 2n): the fast
# path of string lengths, counts, indexes and most ints (it shares _RAW14's objects).
_RAW14 = tuple(bytes([u]) if u < 0x80 else bytes([(u & 0x7F) | 0x80, u >> 7]) for u in range(1 << 14))
_CONT14 = tuple(bytes([(c & 0x7F) | 0x80, (c >> 7) | 0x80]) for c in range(1 << 14))
_ZZ = _RAW14[::2]
_SMALL = len(_ZZ)


def _uvarint(z: int) -> bytes:
    out = b""
    while z >= 0x4000:
        out += _CONT14[z & 0x3FFF]
        z >>= 14
    return out + _RAW14[z]


def _long(n: int) -> bytes:
    """Zigzag varint of a signed 64-bit integer: the slow path for values outside _ZZ."""
    if not _LONG_MIN <= n <= _LONG_MAX:
        raise OverflowError(f"{n} does not fit in an Avro long (signed 64-bit)")
    return _uvarint((n << 1) ^ (n >> 63))


# A timestamp's varint is its low 14 bits (_CONT14) then the varint of the rest, which changes only
# every 8 ms for times near now: cache those tails (bounded; dict get/set are atomic under the GIL).
_TAILS: dict[int, bytes] = {}


def _micros(value: datetime) -> bytes:
    """fastavro's timestamp-micros: integer microseconds of (aware datetime - epoch); no float."""
    d = value - _EPOCH
    return micros_varint((d.days * 86400 + d.seconds) * 1000000 + d.microseconds)


def micros_varint(n: int) -> bytes:
    """The Avro encoding of a timestamp-micros of ``n`` microseconds since the epoch (any
    datetime, years 1..9999, fits in 64 bits): what :func:`_micros` writes for that time, for a
    caller that reads its clock as an integer (``time.time_ns() // 1000``)."""
    z = (n << 1) ^ (n >> 63)
    if z < 0x4000:
        return _RAW14[z]
    tail = _TAILS.get(z >> 14)
    if tail is None:
        if len(_TAILS) >= 4096:
            _TAILS.clear()
        tail = _TAILS[z >> 14] = _uvarint(z >> 14)
    return _CONT14[z & 0x3FFF] + tail


def split_template(encoded: bytes, holes: Sequence[bytes]) -> tuple[bytes, ...]:
    """The constant pieces of ``encoded`` around ``holes``: ``encoded == pieces[0] + holes[0] +
    pieces[1] + ... + holes[-1] + pieces[-1]``. Each hole must occur in ``encoded`` exactly once
    (else ValueError), in the order given.

    For records whose values mostly repeat: write one with sentinel values, cut it at the
    sentinels' encodings, then join the pieces with the real values' encodings. That is the same
    bytes as writing the record with those values when each hole is either the whole encoding of
    a field (a varint: its length may change) or the content of a string whose length cannot
    change (a canonical UUID: its length prefix stays in the piece before). Whoever uses a
    template checks that byte-for-byte against the writer (tests/producers/test_submit_records.py).
    """
    pieces, start = [], 0
    for hole in holes:
        if not hole or encoded.count(hole) != 1:
            raise ValueError(f"template hole {hole!r} occurs {encoded.count(hole)} times, not once")
        at = encoded.index(hole)
        if at < start:
            raise ValueError(f"template hole {hole!r} comes before the previous one")
        pieces.append(encoded[start:at])
        start = at + len(hole)
    pieces.append(encoded[start:])
    return tuple(pieces)


class _Gen:
    """Walks one top-level schema and emits the lines of its writer function.

    ``write(schema, expr, ann, ...)`` emits code appending the encoding of the Python expression
    ``expr`` (of Avro type ``schema``; ``ann`` is the model's annotation of it, which names the
    model of a record and the Enum of an enum) to ``parts`` through ``a = parts.append``.
    """

    def __init__(self, model: type[AvroRecord], schema: dict[str, Any]) -> None:
        self.model, self.schema = model, schema
        self.lines: list[str] = []
        self.globals: dict[str, Any] = {
            "_ZZ": _ZZ, "_long": _long, "_micros": _micros, "_json": _dumps,
            "_pack_d": struct.Struct("<d").pack, "_StructError": struct.error,
        }
        self.named: dict[str, Any] = {}  # full name -> definition, registered where it is defined
        self.in_progress: set[str] = set()  # records being emitted: a reference to one is recursion
        self.count = 0

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def var(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def bind(self, depth: int, expr: str) -> str:
        """A local name holding ``expr``, so an attribute chain is read once however often used."""
        if expr.isidentifier():
            return expr
        name = self.var("v")
        self.emit(depth, f"{name} = {expr}")
        return name

    def emit_varint(self, depth: int, name: str) -> None:
        self.emit(depth, f"a(_ZZ[{name}] if 0 <= {name} < {_SMALL} else _long({name}))")

    def emit_text(self, depth: int, expr: str) -> None:
        """Length then bytes (``expr`` gives the bytes); a length is never negative."""
        b, n = self.var("b"), self.var("n")
        self.emit(depth, f"{b} = {expr}")
        self.emit(depth, f"{n} = len({b})")
        self.emit(depth, f"a(_ZZ[{n}] if {n} < {_SMALL} else _long({n}))")
        self.emit(depth, f"a({b})")

    def define(self, schema: dict[str, Any], ns: str | None, where: str) -> str:
        full = _fullname(schema["name"], schema.get("namespace", ns))
        if self.named.get(full, schema) != schema:
            raise UnsupportedSchemaError(f"{where}: {full} is defined twice, differently")
        self.named[full] = schema
        return full

    def write(self, schema: Any, expr: str, ann: Any, depth: int, ns: str | None, where: str) -> None:
        if isinstance(schema, list):
            return self.write_union(schema, expr, ann, depth, ns, where)
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return self.write_primitive(schema, None, expr, depth, where)
            full = schema if schema in self.named else _fullname(schema, ns)
            if full not in self.named:  # the self-contained form defines a name before its uses
                raise UnsupportedSchemaError(f"{where}: unknown type name {schema!r}")
            if full in self.in_progress:
                raise UnsupportedSchemaError(f"{where}: recursive type {full} is not supported")
            return self.write(self.named[full], expr, ann, depth, ns, where)
        kind = schema.get("type")
        if kind == "record":
            return self.write_record(schema, expr, ann, depth, ns, where)
        if kind == "enum":
            return self.write_enum(schema, expr, ann, depth, ns, where)
        if kind in ("array", "map"):
            # fastavro's block layout: a non-empty array/map is one block (count, items), then a
            # 0 count ends it; an empty one is just the 0.
            seq, n = self.bind(depth, expr), self.var("n")
            self.emit(depth, f"# {where}: {kind}")
            self.emit(depth, f"{n} = len({seq})")
            self.emit(depth, f"if {n}:")
            self.emit_varint(depth + 1, n)
            if kind == "array":
                item = self.var("item")
                self.emit(depth + 1, f"for {item} in {seq}:")
                self.write(schema["items"], item, _type_arg(ann, list, 0), depth + 2, ns, f"{where}[]")
            else:
                key, val = self.var("k"), self.var("val")
                self.emit(depth + 1, f"for {key}, {val} in {seq}.items():")
                self.emit_text(depth + 2, f"{key}.encode()")
                self.write(schema["values"], val, _type_arg(ann, dict, 1), depth + 2, ns, f"{where}{{}}")
            return self.emit(depth, 'a(b"\\x00")')
        if kind in _PRIMITIVES:
            return self.write_primitive(kind, schema.get("logicalType"), expr, depth, where)
        if isinstance(kind, (list, dict)) or (isinstance(kind, str) and kind not in ("fixed", "error")):
            return self.write(kind, expr, ann, depth, ns, where)  # {"type": <a name or a schema>}
        raise UnsupportedSchemaError(f"{where}: Avro type {kind!r} is not supported")

    def write_primitive(self, kind: str, logical: str | None, expr: str, depth: int, where: str) -> None:
        self.emit(depth, f"# {where}: {kind}" + (f" ({logical})" if logical else ""))
        if kind == "string" and logical in (None, "uuid"):
            # uuid fields hold the canonical text (records.UuidStr): fastavro writes that text.
            return self.emit_text(depth, f"{expr}.encode()")
        if kind == "string" and logical == "json":
            # to_avro() turns these JSON objects into compact JSON text: same encoder here.
            return self.emit_text(depth, f"_json({expr}).encode()")
        if kind in ("int", "long") and logical is None:
            return self.emit_varint(depth, self.bind(depth, expr))
        if kind == "long" and logical == "timestamp-micros":
            return self.emit(depth, f"a(_micros({expr}))")
        if kind == "double" and logical is None:
            return self.emit(depth, f"a(_pack_d({expr}))")
        if kind == "boolean" and logical is None:
            return self.emit(depth, f'a(b"\\x01" if {expr} else b"\\x00")')
        if kind == "null" and logical is None:
            return None  # null is written as nothing
        what = f"{kind} with logicalType {logical!r}" if logical else kind
        raise UnsupportedSchemaError(f"{where}: Avro {what} is not supported")

    def write_union(self, branches: list[Any], expr: str, ann: Any, depth: int, ns: str | None, where: str) -> None:
        nulls = [i for i, b in enumerate(branches) if b == "null" or (isinstance(b, dict) and b.get("type") == "null")]
        if len(branches) != 2 or len(nulls) != 1:
            raise UnsupportedSchemaError(f"{where}: only a union of null and one other type is supported: {branches!r}")
        other = 1 - nulls[0]
        # The branch index, then the value: None takes the null branch, anything else the other.
        value = self.bind(depth, expr)
        self.emit(depth, f"if {value} is None:")
        self.emit(depth + 1, f"a({_ZZ[nulls[0]]!r})")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"a({_ZZ[other]!r})")
        self.write(branches[other], value, ann, depth + 1, ns, where)

    def write_record(
        self, schema: dict[str, Any], expr: str, ann: Any, depth: int, ns: str | None, where: str,
        only: tuple[str, ...] | None = None,
    ) -> None:
        """The record's fields in schema order, read as attributes of ``expr``; with ``only`` (the
        top level of a fields writer, see :func:`compile_writer`) just those fields, read from the
        arguments ``f_<name>``: the others are still walked, for the named types they define, but
        their code is dropped."""
        full = self.define(schema, ns, where)
        model = _strip(ann)[0] if ann is not None else None
        if not (isinstance(model, type) and issubclass(model, AvroRecord)):
            raise UnsupportedSchemaError(f"{where}: record {full} has no AvroRecord model (annotation {ann!r})")
        if model.avro_name != full:
            raise UnsupportedSchemaError(f"{where}: model {model.__name__} mirrors {model.avro_name}, not {full}")
        self.in_progress.add(full)
        self.emit(depth, f"# {where or 'record'}: {full}")
        rec = self.bind(depth, expr)
        kept = self.lines
        for field in schema["fields"]:  # the schema's order is the wire order
            name = field["name"]
            info = model.model_fields.get(name)
            if info is None:
                raise UnsupportedSchemaError(f"{where}: model {model.__name__} has no field {name!r} of {full}")
            plain = name.isidentifier() and not keyword.iskeyword(name)
            attr = f"{rec}.{name}" if plain else f"getattr({rec}, {name!r})"
            if only is not None:
                self.lines, attr = (kept, f"f_{name}") if name in only else ([], attr)
            inner_ns = full.rpartition(".")[0] or None
            self.write(field["type"], attr, info.annotation, depth, inner_ns, f"{where}.{name}" if where else name)
        self.lines = kept
        self.in_progress.discard(full)

    def write_enum(self, schema: dict[str, Any], expr: str, ann: Any, depth: int, ns: str | None, where: str) -> None:
        full = self.define(schema, ns, where)
        # symbol -> encoded index, one dict lookup at run time. A str Enum member hashes and compares
        # as its value, so it finds its symbol; members of other Enums are added as keys too.
        table: dict[Any, bytes] = {s: _long(i) for i, s in enumerate(schema["symbols"])}
        enum_cls = _strip(ann)[0] if ann is not None else None
        if isinstance(enum_cls, type) and issubclass(enum_cls, enum.Enum):
            table.update({m: table[m.value] for m in enum_cls if m.value in table})
        name = self.var("_enum")
        self.globals[name] = table
        self.emit(depth, f"# {where}: enum {full}")
        self.emit(depth, f"a({name}[{expr}])")

    def source(self, fname: str, fields: tuple[str, ...] | None = None) -> str:
        if not isinstance(self.schema, dict) or self.schema.get("type") != "record":
            raise UnsupportedSchemaError(f"{self.model.__name__}: the top-level schema must be a record")
        avro_name = self.model.avro_name
        if fields is None:
            args, what, value = "rec", avro_name, "rec"
        else:
            names = [f["name"] for f in self.schema["fields"]]
            start = names.index(fields[0]) if fields and fields[0] in names else -1
            if start < 0 or names[start : start + len(fields)] != list(fields):
                raise UnsupportedSchemaError(f"{avro_name}: {fields!r} are not consecutive fields of it")
            if not all(n.isidentifier() and not keyword.iskeyword(n) for n in fields):
                raise UnsupportedSchemaError(f"{avro_name}: {fields!r} are not all identifiers")
            args = ", ".join(f"f_{n}" for n in fields)
            what, value = f"the fields {', '.join(fields)} of {avro_name}", f"({args},)"
        self.write_record(self.schema, "rec", self.model, 2, None, "", only=fields)
        head = [  # the try costs nothing in CPython 3.11+ unless something raises
            f"def {fname}({args}, prefix=b''):",
            f'    """Avro binary of {"a " if fields is None else ""}{what} after ``prefix`` (generated by schemas/avro_writer.py)."""',
            "    parts = [prefix]", "    a = parts.append", "    try:",
        ]
        tail = [
            '        return b"".join(parts)', "    except (KeyError, AttributeError, TypeError, _StructError) as exc:",
            f"        raise ValueError(f'cannot write {what} from {{{value}!r:.300}}: {{exc!r}}') from exc",
        ]
        return "\n".join(head + self.lines + tail) + "\n"


def _fullname(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _type_arg(ann: Any, origin: type, index: int) -> Any:
    """The item annotation of ``list[X]`` (index 0) or value annotation of ``dict[K, X]`` (1)."""
    base = _strip(ann)[0] if ann is not None else None
    return typing.get_args(base)[index] if typing.get_origin(base) is origin else None


_CACHE: dict[tuple[type, str, tuple[str, ...] | None], Writer] = {}


def compile_writer(
    model: type[AvroRecord], schema: dict[str, Any], fields: tuple[str, ...] | None = None
) -> Writer:
    """The writer of ``model`` instances for ``schema`` (the self-contained form,
    ``avro_files.schema_json``): ``writer(instance, prefix=b"") -> prefix + Avro binary body``.

    With ``fields``, consecutive top-level fields of the record, a writer of just those fields
    from their values: ``writer(value_1, ..., value_n, prefix=b"") -> prefix + their Avro binary``
    (for a caller that makes the rest of the record from a template; same generated code).

    Generated on the first call for a model and schema, then cached. Raises
    UnsupportedSchemaError for a schema it cannot write; the writer raises ValueError for a value
    that does not fit the schema (an instance made without validation)."""
    key = (model, json.dumps(schema, sort_keys=True), fields)
    writer = _CACHE.get(key)
    if writer is None:
        fname = f"write_{model.__name__}" + (f"_{fields[0]}_to_{fields[-1]}" if fields else "")
        src = (gen := _Gen(model, schema)).source(fname, fields)
        filename = f"<avro_writer {model.__module__}.{model.__qualname__} #{len(_CACHE)}>"
        linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
        namespace = dict(gen.globals)
        exec(compile(src, filename, "exec"), namespace)  # noqa: S102 - code generated just above
        writer = namespace[fname]
        writer.__avro_source__ = src
        _CACHE[key] = writer
    return writer
