"""Avro binary decoding by code generated from the (writer, reader) schema pair: no fastavro.

fastavro's ``schemaless_reader`` walks both schemas for every record, matching fields by name and
dispatching on each field's type, through a file object. :func:`compile_reader` does that walk
once per pair of parsed schemas and emits one Python function: straight-line code over the bytes,
one block per writer field, that returns the dict fastavro returns (the same keys in the same
order, the same values: ``uuid.UUID`` for logicalType uuid, an aware UTC ``datetime`` for
timestamp-micros, the text for logicalType json). The mirror of :mod:`schemas.avro_writer`; the
source is kept as ``reader.__avro_source__`` and in :mod:`linecache`.

Schema resolution, for the evolutions docs/SCHEMA_EVOLUTION.md allows: a field the reader added
(its default), a field the reader removed (skipped), a writer enum symbol the reader lacks (the
reader enum's default, else the record is unreadable), a plain writer type the reader made
nullable, int read as long. Supported types: records, enums, string (plain, uuid, json), int,
long (plain, timestamp-micros), float, double, boolean, null, bytes, arrays, maps and unions of
null with one other type. Anything else raises :class:`UnsupportedSchemaError` when compiling, so
the caller (schemas/codec.py) reads that pair with fastavro instead.

The generated function raises, for bytes that are not a record of the writer schema, one of
IndexError, KeyError, ValueError (UnicodeDecodeError), struct.error or :class:`BadBody`: the codec
turns any of them into DecodeError.
"""

from __future__ import annotations

import copy
import json
import linecache
import struct
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from schemas.avro_writer import UnsupportedSchemaError

__all__ = ["BadBody", "READ_ERRORS", "UnsupportedSchemaError", "compile_reader"]

Reader = Callable[[bytes, int], dict[str, Any]]
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # fastavro's epoch for timestamp-micros


class BadBody(ValueError):
    """The bytes are not a record of the writer schema (a bad length, count or branch)."""


# What a generated reader raises for bytes that are not a record of its writer schema.
READ_ERRORS = (IndexError, KeyError, ValueError, struct.error, OverflowError)


def _varint(data: bytes, p: int) -> tuple[int, int]:
    """The zigzag varint at ``data[p]``, and the position after it: the slow path for values of
    more than one byte (the generated code reads one-byte values inline)."""
    shift = z = 0
    while True:
        b = data[p]
        p += 1
        z |= (b & 0x7F) << shift
        if b < 0x80:
            return (z >> 1) ^ -(z & 1), p
        shift += 7
        if shift > 63:
            raise BadBody(f"varint at byte {p} is longer than 10 bytes")


def _count(data: bytes, p: int) -> tuple[int, int]:
    """An array's or map's block count; a negative count is followed by the block's byte size."""
    n, p = _varint(data, p)
    if n < 0:
        n = -n
        _, p = _varint(data, p)
    return n, p


_new, _set, _SAFE_UNKNOWN = object.__new__, object.__setattr__, uuid.SafeUUID.unknown


def _uuid(text: str) -> uuid.UUID:
    """``uuid.UUID(text)``, without its parsing of braces and URN prefixes for the canonical
    36-character form (what our writers write): the same value, the same ValueError for bad hex
    (UUID's own check is ``int(hex, 16)`` of the 32 digits too), about half the time."""
    digits = text.replace("-", "")
    if len(digits) != 32 or len(text) != 36:
        return uuid.UUID(text)
    value = _new(uuid.UUID)
    _set(value, "int", int(digits, 16))
    _set(value, "is_safe", _SAFE_UNKNOWN)
    return value


# The UUIDs of recently read texts: a task's id comes back on each of its status events (PENDING,
# QUEUED, PROCESSING, COMPLETED...), and UUID objects are immutable, so one is shared. Bounded
# (cleared when full); dict get/set are atomic under the GIL.
_UUIDS: dict[bytes, uuid.UUID] = {}


def _uuid_of(raw: bytes) -> uuid.UUID:
    value = _uuid(raw.decode())
    if len(_UUIDS) >= 4096:
        _UUIDS.clear()
    _UUIDS[raw] = value
    return value


def _skip_string(data: bytes, p: int) -> int:
    n, p = _varint(data, p)
    if n < 0:
        raise BadBody(f"negative length {n}")
    return p + n


class _Gen:
    """Walks a writer schema against a reader schema and emits the lines of one reader function.

    ``read(w, r, target, depth)`` emits code that reads a value of writer type ``w`` at ``data[p]``
    and assigns its reader-side value (reader type ``r``) to the local ``target``, advancing ``p``.
    ``r is None`` means "skip it" (a field the reader does not have).
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.globals: dict[str, Any] = {
            "_varint": _varint, "_count": _count, "_skip_string": _skip_string, "BadBody": BadBody,
            "_unpack_d": struct.Struct("<d").unpack_from, "_unpack_f": struct.Struct("<f").unpack_from,
            "_uuid_of": _uuid_of, "_UUIDS": _UUIDS, "_EPOCH": _EPOCH, "_td": timedelta, "_divmod": divmod, "_BOOL": {0: False, 1: True},
        }
        self.writer_named: dict[str, Any] = {}
        self.reader_named: dict[str, Any] = {}
        self.in_progress: set[str] = set()
        self.count = 0

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def var(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def const(self, stem: str, value: Any) -> str:
        name = self.var(f"_{stem}")
        self.globals[name] = value
        return name

    # -- schema helpers --------------------------------------------------------------------

    def resolve(self, schema: Any, named: dict[str, Any], ns: str | None, where: str) -> Any:
        """A named reference replaced by its definition; {"type": X} wrappers unwrapped."""
        while True:
            if isinstance(schema, str) and schema not in _PRIMITIVES:
                full = schema if schema in named else _fullname(schema, ns)
                if full not in named:
                    raise UnsupportedSchemaError(f"{where}: unknown type name {schema!r}")
                if full in self.in_progress:
                    raise UnsupportedSchemaError(f"{where}: recursive type {full} is not supported")
                schema = named[full]
            elif isinstance(schema, dict) and isinstance(schema.get("type"), (list, dict)):
                schema = schema["type"]
            elif (isinstance(schema, dict) and schema.get("type") not in _PRIMITIVES
                  and schema.get("type") not in ("record", "enum", "array", "map", "fixed", "error")
                  and isinstance(schema.get("type"), str)):
                schema = schema["type"]  # {"type": "<a name>"}
            else:
                return schema

    @staticmethod
    def kind(schema: Any) -> tuple[str, str | None]:
        if isinstance(schema, list):
            return "union", None
        if isinstance(schema, str):
            return schema, None
        return schema["type"], schema.get("logicalType")

    def define(self, schema: dict[str, Any], named: dict[str, Any], ns: str | None) -> str:
        full = _fullname(schema["name"], schema.get("namespace", ns))
        named.setdefault(full, schema)
        return full

    @staticmethod
    def is_null(schema: Any) -> bool:
        return schema == "null" or (isinstance(schema, dict) and schema.get("type") == "null")

    # -- emitters --------------------------------------------------------------------------

    def varint(self, depth: int, target: str) -> None:
        """One-byte values inline (counts, lengths, indexes, small ints), others through _varint."""
        self.emit(depth, f"{target} = data[p]")
        self.emit(depth, f"if {target} < 0x80:")
        self.emit(depth + 1, "p += 1")
        self.emit(depth + 1, f"{target} = ({target} >> 1) ^ -({target} & 1)")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"{target}, p = _varint(data, p)")

    def raw(self, depth: int, target: str) -> None:
        """Length then bytes, as a bytes object in ``target``."""
        n = self.var("n")
        self.varint(depth, n)
        self.emit(depth, f"if {n} < 0:")
        self.emit(depth + 1, f"raise BadBody(f'negative length {{{n}}} at byte {{p}}')")
        self.emit(depth, f"{target} = data[p:p + {n}]")
        self.emit(depth, f"p += {n}")

    def read(self, w: Any, r: Any, target: str, depth: int, wns: str | None, rns: str | None, where: str) -> None:
        w = self.resolve(w, self.writer_named, wns, where)
        wkind, wlogical = self.kind(w)
        if r is not None:
            r = self.resolve(r, self.reader_named, rns, where)
        if wkind == "union":
            return self.read_union(w, r, target, depth, wns, rns, where)
        if r is not None and isinstance(r, list):
            # A plain writer type read by a nullable reader type: the union's other branch.
            nulls = [b for b in r if self.is_null(b)]
            others = [b for b in r if not self.is_null(b)]
            if len(r) != 2 or len(nulls) != 1 or self.is_null(w):
                raise UnsupportedSchemaError(f"{where}: reading {w!r} as union {r!r} is not supported")
            r = self.resolve(others[0], self.reader_named, rns, where)
        if r is not None:
            rkind, rlogical = self.kind(r)
            if not (rkind == wkind or (wkind, rkind) == ("int", "long")):
                raise UnsupportedSchemaError(f"{where}: writer {wkind} read as {rkind} is not supported")
            if rkind in _PRIMITIVES and rlogical != wlogical and wkind == rkind:
                raise UnsupportedSchemaError(f"{where}: logicalType {wlogical!r} read as {rlogical!r}")
        if wkind == "record":
            return self.read_record(w, r, target, depth, wns, rns, where)
        if wkind == "enum":
            return self.read_enum(w, r, target, depth, wns, rns, where)
        if wkind == "array":
            return self.read_array(w, r, target, depth, wns, rns, where)
        if wkind == "map":
            return self.read_map(w, r, target, depth, wns, rns, where)
        if wkind in _PRIMITIVES:
            return self.read_primitive(wkind, wlogical, r is None, target, depth, where)
        raise UnsupportedSchemaError(f"{where}: Avro type {wkind!r} is not supported")

    def read_primitive(self, kind: str, logical: str | None, skip: bool, target: str, depth: int, where: str) -> None:
        self.emit(depth, f"# {where}: {kind}" + (f" ({logical})" if logical else "") + (" skipped" if skip else ""))
        if kind == "null" and logical is None:
            return self.emit(depth, f"{target} = None")
        if kind == "string" and logical in (None, "uuid", "json"):
            if skip:
                return self.emit(depth, "p = _skip_string(data, p)")
            self.raw(depth, target)
            if logical == "uuid":  # fastavro's read_uuid: uuid.UUID of the text
                return self.emit(depth, f"{target} = _UUIDS.get({target}) or _uuid_of({target})")
            return self.emit(depth, f"{target} = {target}.decode()")
        if kind == "bytes" and logical is None:
            return self.raw(depth, target)
        if kind in ("int", "long") and logical is None:
            return self.varint(depth, target)
        if kind == "long" and logical == "timestamp-micros":
            self.emit(depth, f"{target}, p = _varint(data, p)")
            if not skip:  # fastavro's read_timestamp_micros (epoch + timedelta), its fields
                s, us = self.var("s"), self.var("us")  # given by position: twice as fast
                self.emit(depth, f"{s}, {us} = _divmod({target}, 1000000)")
                self.emit(depth, f"{target} = _EPOCH + _td(0, {s}, {us})")
            return None
        if kind in ("double", "float") and logical is None:
            size, fn = (8, "_unpack_d") if kind == "double" else (4, "_unpack_f")
            self.emit(depth, f"{target} = {fn}(data, p)[0]")
            return self.emit(depth, f"p += {size}")
        if kind == "boolean" and logical is None:
            self.emit(depth, f"{target} = _BOOL[data[p]]")
            return self.emit(depth, "p += 1")
        what = f"{kind} with logicalType {logical!r}" if logical else kind
        raise UnsupportedSchemaError(f"{where}: Avro {what} is not supported")

    def read_union(self, w: list[Any], r: Any, target: str, depth: int, wns: str | None, rns: str | None,
                   where: str) -> None:
        nulls = [i for i, b in enumerate(w) if self.is_null(b)]
        if len(w) != 2 or len(nulls) != 1:
            raise UnsupportedSchemaError(f"{where}: only a union of null and one other type is supported: {w!r}")
        other = 1 - nulls[0]
        r_other: Any = None
        if r is not None:
            if not isinstance(r, list):
                raise UnsupportedSchemaError(f"{where}: union read as a plain type {r!r} is not supported")
            r_nulls = [b for b in r if self.is_null(b)]
            r_others = [b for b in r if not self.is_null(b)]
            if len(r) != 2 or len(r_nulls) != 1:
                raise UnsupportedSchemaError(f"{where}: reader union {r!r} is not null and one other type")
            r_other = r_others[0]
        b = self.var("u")
        self.emit(depth, f"# {where}: union, null is branch {nulls[0]}")
        self.emit(depth, f"{b} = data[p]")
        self.emit(depth, "p += 1")
        self.emit(depth, f"if {b} == {2 * nulls[0]}:")
        self.emit(depth + 1, f"{target} = None")
        self.emit(depth, f"elif {b} == {2 * other}:")
        self.read(w[other], r_other if r is not None else None, target, depth + 1, wns, rns, where)
        self.emit(depth, "else:")
        place = where.replace("{", "{{").replace("}", "}}").replace("'", "")
        self.emit(depth + 1, f"raise BadBody(f'union branch byte {{{b}}} at byte {{p - 1}} of {place}')")

    def read_record(self, w: dict[str, Any], r: dict[str, Any] | None, target: str, depth: int,
                    wns: str | None, rns: str | None, where: str) -> None:
        full = self.define(w, self.writer_named, wns)
        if r is not None:
            rfull = self.define(r, self.reader_named, rns)
            if rfull != full and full not in r.get("aliases", ()):
                raise UnsupportedSchemaError(f"{where}: writer record {full} read as {rfull}")
        self.in_progress.add(full)
        self.emit(depth, f"# {where or 'record'}: {full}" + (" skipped" if r is None else ""))
        inner_wns = full.rpartition(".")[0] or None
        inner_rns = None
        reader_fields: dict[str, dict[str, Any]] = {}
        if r is not None:
            inner_rns = _fullname(r["name"], r.get("namespace", rns)).rpartition(".")[0] or None
            for f in r["fields"]:
                reader_fields[f["name"]] = f
                for alias in f.get("aliases", ()):
                    reader_fields.setdefault(alias, f)
        items: list[tuple[str, str]] = []  # (reader field name, expression), fastavro's order
        for field in w["fields"]:
            name = field["name"]
            path = f"{where}.{name}" if where else name
            rf = reader_fields.pop(name, None) if r is not None else None
            if rf is None:  # skipped: a field the reader lacks, or one of a skipped record
                self.read(field["type"], None, "_", depth, inner_wns, inner_rns, path)
                continue
            local = self.var("f")
            self.read(field["type"], rf["type"], local, depth, inner_wns, inner_rns, path)
            items.append((rf["name"], local))
            for key in [k for k, v in reader_fields.items() if v is rf]:  # its name and aliases
                del reader_fields[key]
        if r is not None:
            seen = set()
            for f in r["fields"]:
                if f["name"] not in reader_fields or f["name"] in seen:
                    continue
                seen.add(f["name"])
                if "default" not in f:
                    raise UnsupportedSchemaError(f"{where}: reader field {f['name']!r} has no default")
                items.append((f["name"], self.default_expr(f["default"])))
        if r is not None:
            body = ", ".join(f"{json.dumps(k)}: {v}" for k, v in items)
            self.emit(depth, f"{target} = {{{body}}}")
        self.in_progress.discard(full)

    def default_expr(self, value: Any) -> str:
        """A reader field's default, as fastavro returns it (the schema's value); a fresh copy of
        a list or object, so no caller shares it with another record."""
        if value is None or isinstance(value, (bool, int, float, str)):
            return repr(value)
        name = self.const("default", value)
        return f"_deepcopy({name})"

    def read_enum(self, w: dict[str, Any], r: dict[str, Any] | None, target: str, depth: int,
                  wns: str | None, rns: str | None, where: str) -> None:
        full = self.define(w, self.writer_named, wns)
        symbols = list(w["symbols"])
        if len(symbols) > 64:  # one-byte indexes only: 64 is the most a byte holds
            raise UnsupportedSchemaError(f"{where}: enum {full} has more than 64 symbols")
        table: dict[int, str] = {}
        if r is not None:
            rfull = self.define(r, self.reader_named, rns)
            if rfull != full and full not in r.get("aliases", ()):
                raise UnsupportedSchemaError(f"{where}: writer enum {full} read as {rfull}")
            known, default = set(r["symbols"]), r.get("default")
            for i, s in enumerate(symbols):
                if s in known:
                    table[2 * i] = s
                elif default:  # fastavro: a symbol the reader lacks reads as its default
                    table[2 * i] = default
                # else: no entry, the record is unreadable (fastavro's SchemaResolutionError)
        else:
            table = {2 * i: s for i, s in enumerate(symbols)}
        name = self.const("enum", table)
        self.emit(depth, f"# {where}: enum {full}")
        self.emit(depth, f"{target} = {name}[data[p]]")
        self.emit(depth, "p += 1")

    def read_array(self, w: dict[str, Any], r: dict[str, Any] | None, target: str, depth: int,
                   wns: str | None, rns: str | None, where: str) -> None:
        n, i, item = self.var("n"), self.var("i"), self.var("item")
        self.emit(depth, f"# {where}: array" + (" skipped" if r is None else ""))
        if r is not None:
            self.emit(depth, f"{target} = []")
        self.emit(depth, "while True:")
        self.emit(depth + 1, f"{n}, p = _count(data, p)")
        self.emit(depth + 1, f"if not {n}:")
        self.emit(depth + 2, "break")
        self.emit(depth + 1, f"for {i} in range({n}):")
        self.emit(depth + 2, "pass")  # the body below may be comments only (a skipped empty record)
        if r is None:
            return self.read(w["items"], None, "_", depth + 2, wns, rns, f"{where}[]")
        self.read(w["items"], r["items"], item, depth + 2, wns, rns, f"{where}[]")
        self.emit(depth + 2, f"{target}.append({item})")

    def read_map(self, w: dict[str, Any], r: dict[str, Any] | None, target: str, depth: int,
                 wns: str | None, rns: str | None, where: str) -> None:
        n, i, key, val = self.var("n"), self.var("i"), self.var("k"), self.var("val")
        self.emit(depth, f"# {where}: map" + (" skipped" if r is None else ""))
        if r is not None:
            self.emit(depth, f"{target} = {{}}")
        self.emit(depth, "while True:")
        self.emit(depth + 1, f"{n}, p = _count(data, p)")
        self.emit(depth + 1, f"if not {n}:")
        self.emit(depth + 2, "break")
        self.emit(depth + 1, f"for {i} in range({n}):")
        self.emit(depth + 2, "pass")  # the body below may be comments only (a skipped empty record)
        if r is None:
            self.emit(depth + 2, "p = _skip_string(data, p)")
            return self.read(w["values"], None, "_", depth + 2, wns, rns, f"{where}{{}}")
        self.raw(depth + 2, key)
        self.read(w["values"], r["values"], val, depth + 2, wns, rns, f"{where}{{}}")
        self.emit(depth + 2, f"{target}[{key}.decode()] = {val}")

    def source(self, fname: str, writer: dict[str, Any], reader: dict[str, Any] | None) -> str:
        if not isinstance(writer, dict) or writer.get("type") != "record":
            raise UnsupportedSchemaError("the top-level writer schema must be a record")
        if reader is not None and (not isinstance(reader, dict) or reader.get("type") != "record"):
            raise UnsupportedSchemaError("the top-level reader schema must be a record")
        self.globals["_deepcopy"] = copy.deepcopy
        # With no reader schema the writer's is the reader's: same walk, no resolution.
        self.read_record(writer, reader if reader is not None else writer, "rec", 1, None, None, "")
        head = [
            f"def {fname}(data, p=0):",
            f'    """The record {writer["name"]} at ``data[p:]`` as fastavro reads it '
            f'(generated by schemas/avro_reader.py)."""',
        ]
        tail = [
            "    if p > len(data):",
            "        raise BadBody(f'the body ends {p - len(data)} byte(s) early')",
            "    return rec",
        ]
        return "\n".join(head + self.lines + tail) + "\n"


def _fullname(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _clean(schema: Any) -> Any:
    """A schema without fastavro's parse markers (``__fastavro_parsed``, ``__named_schemas``)."""
    if isinstance(schema, dict):
        return {k: _clean(v) for k, v in schema.items() if not k.startswith("__")}
    if isinstance(schema, list):
        return [_clean(v) for v in schema]
    return schema


_CACHE: dict[tuple[int, int], tuple[Any, Any, Reader]] = {}


def compile_reader(writer: dict[str, Any], reader: dict[str, Any] | None = None) -> Reader:
    """The reader of Avro bodies written with ``writer``, resolved against ``reader`` (None: the
    writer's own schema): ``read(data, p=0) -> dict``, the record at ``data[p:]`` exactly as
    ``fastavro.schemaless_reader(BytesIO(data[p:]), writer, reader)`` returns it.

    Both schemas are self-contained (the parsed form fastavro's ``parse_schema`` gives, or the
    JSON form: every named type defined before its references). Compiled on the first call for a
    pair of schema objects, then cached by identity (the codec keeps its parsed schemas for the
    life of the process). Raises UnsupportedSchemaError for a pair it does not generate code for."""
    key = (id(writer), id(reader))
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is writer and hit[1] is reader:
        return hit[2]
    w, r = _clean(writer), _clean(reader) if reader is not None else None
    fname = "read_" + str(w.get("name", "record")).rpartition(".")[2]
    gen = _Gen()
    src = gen.source(fname, w, r)
    filename = f"<avro_reader {w.get('name')} #{len(_CACHE)}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    namespace = dict(gen.globals)
    exec(compile(src, filename, "exec"), namespace)  # noqa: S102 - code generated just above
    fn = cast(Reader, namespace[fname])
    fn.__avro_source__ = src  # type: ignore[attr-defined]
    if len(_CACHE) >= 1024:  # bounded: a process meets a few dozen pairs; codecs keep their own
        _CACHE.clear()
    _CACHE[key] = (writer, reader, fn)  # the schemas are held, so their ids stay theirs
    return fn
