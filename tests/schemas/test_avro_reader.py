"""The generated Avro readers (``schemas/avro_reader.py``) read exactly what fastavro reads.

Value for value (same keys in the same order, same types: ``uuid.UUID``, aware datetimes) against
``fastavro.schemaless_reader``: every event model's fixed and hypothesis-generated instances;
every released snapshot in schemas/avro/history as the writer with the current schema as the
reader (records generated from the old schema itself); a synthetic pair covering every
resolution rule the generator supports. Truncated bodies and garbage raise DecodeError through
the codec; pairs the generator does not support fail to compile and the codec reads them with
fastavro instead.
"""

from __future__ import annotations

import copy
import io
import json
import uuid
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import avro_files
from schemas.avro_reader import UnsupportedSchemaError, compile_reader
from schemas.codec import EventCodec
from schemas.errors import DecodeError
from schemas.events import StatusChanged
from schemas.framing import single_object_prefix
from schemas.records import AvroRecord
from tests.schemas.test_avro_writer import FAST, MODELS, TEXT, build, fastavro_bytes, record_strategy

HISTORY = sorted((Path(avro_files.SCHEMA_DIR) / "history").glob("*.avsc"))


@cache
def codec_knowing(path: Path | None = None) -> EventCodec:
    """One codec per test case rather than per example (a codec fingerprints every schema)."""
    return EventCodec(extra_writer_schemas=[json.loads(path.read_text())] if path else [])


def fastavro_read(data: bytes, writer: dict[str, Any], reader: dict[str, Any] | None = None) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(data), writer, reader)


def assert_same(got: Any, want: Any, path: str = "") -> None:
    """Equal, with the same types all the way down and dict keys in the same order."""
    assert type(got) is type(want), (path, got, want)
    if isinstance(want, dict):
        assert list(got) == list(want), path
        for key in want:
            assert_same(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{path}[{i}]")
    else:
        assert got == want, path
        if isinstance(want, datetime):
            assert got.tzinfo == want.tzinfo, path


def check_event(event: AvroRecord) -> None:
    parsed = avro_files.parsed_schema(event.avro_name)
    data = fastavro_bytes(event)
    assert_same(compile_reader(parsed)(data), fastavro_read(data, parsed))


# ------------------------------------------------------------------ current schemas, models


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("full", [True, False], ids=["full", "minimal"])
def test_fixed_instances_read_as_fastavro_reads_them(model: type[AvroRecord], full: bool) -> None:
    check_event(build(model, full))


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@settings(FAST, max_examples=6)
@given(data=st.data())
def test_generated_instances_read_as_fastavro_reads_them(model: type[AvroRecord], data: st.DataObject) -> None:
    check_event(data.draw(record_strategy(model)))


def test_the_codec_decodes_with_the_generated_reader_and_the_model_round_trips() -> None:
    codec = EventCodec()
    for model in MODELS:
        event = build(model, True)
        framed = codec.encode(event)
        name, record = codec.decode_dict(framed)
        assert name == model.avro_name
        assert codec._readers[id(avro_files.parsed_schema(name))][1] is not None  # not fastavro
        assert_same(record, fastavro_read(framed[10:], avro_files.parsed_schema(name)))
        assert codec.decode(framed) == event


# ------------------------------------------------------------------ any schema: datum strategies


def datum(schema: Any, named: dict[str, Any], ns: str | None = None) -> st.SearchStrategy[Any]:
    """Values of an Avro schema (the JSON form, names defined before use), as fastavro writes them."""
    if isinstance(schema, list):
        return st.one_of([datum(b, named, ns) for b in schema])
    if isinstance(schema, str):
        simple = {"null": st.none(), "boolean": st.booleans(), "int": st.integers(-(2**31), 2**31 - 1),
                  "long": st.integers(-(2**63), 2**63 - 1), "double": st.floats(allow_nan=False),
                  "float": st.floats(width=32, allow_nan=False), "bytes": st.binary(max_size=8),
                  "string": st.text(TEXT, max_size=8)}
        if schema in simple:
            return simple[schema]
        full = schema if schema in named else f"{ns}.{schema}"
        return st.deferred(lambda: named[full])
    kind, logical = schema["type"], schema.get("logicalType")
    if isinstance(kind, (list, dict)):
        return datum(kind, named, ns)
    if kind in ("record", "enum"):
        full = schema["name"] if "." in schema["name"] else f"{schema.get('namespace', ns)}.{schema['name']}"
        inner = full.rpartition(".")[0]
        if kind == "enum":
            strategy: st.SearchStrategy[Any] = st.sampled_from(schema["symbols"])
        else:
            strategy = st.fixed_dictionaries({f["name"]: datum(f["type"], named, inner) for f in schema["fields"]})
        named[full] = strategy
        return strategy
    if kind == "array":
        return st.lists(datum(schema["items"], named, ns), max_size=3)
    if kind == "map":
        return st.dictionaries(st.text(TEXT, max_size=5), datum(schema["values"], named, ns), max_size=3)
    if logical == "uuid":
        return st.uuids().map(str)
    if logical == "timestamp-micros":
        return st.datetimes(datetime(1, 1, 2), datetime(9999, 12, 30), timezones=st.just(UTC))
    if logical == "json":
        return st.dictionaries(st.text(TEXT, max_size=4), st.integers() | st.text(TEXT, max_size=4),
                               max_size=3).map(json.dumps)
    return datum(kind, named, ns)


def written(schema: dict[str, Any], value: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, avro_files.parse(schema), value)
    return buf.getvalue()


@pytest.mark.parametrize("path", HISTORY, ids=lambda p: p.name)
@settings(FAST, max_examples=10)
@given(data=st.data())
def test_released_snapshots_read_with_the_current_schema_as_fastavro_reads_them(
        path: Path, data: st.DataObject) -> None:
    old_json = json.loads(path.read_text())
    old = avro_files.parse(old_json)
    current = avro_files.parsed_schema(old["name"])
    body = written(old_json, data.draw(datum(old_json, {})))
    want = fastavro_read(body, old, current)
    assert_same(compile_reader(old, current)(body), want)
    # And through the codec, which finds the old schema by its fingerprint.
    codec = codec_knowing(path)
    name, record = codec.decode_dict(single_object_prefix(avro_files.fingerprint(old)) + body)
    assert name == old["name"]
    assert_same(record, want)


@pytest.mark.parametrize("name", sorted({m.avro_name for m in MODELS}))
@settings(FAST, max_examples=5)
@given(data=st.data())
def test_any_value_of_the_current_schemas_reads_as_fastavro_reads_it(name: str, data: st.DataObject) -> None:
    schema = avro_files.schema_json(name)
    parsed = avro_files.parsed_schema(name)
    body = written(schema, data.draw(datum(schema, {})))
    assert_same(compile_reader(parsed)(body), fastavro_read(body, parsed))


# ------------------------------------------------------------------ every resolution rule

COLOR = {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}
INNER = {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "int"}, {"name": "gone", "type": "string"}]}
WRITER = {"type": "record", "name": "Rec", "namespace": "t", "fields": [
    {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "n", "type": "int"},  # int read as long
    {"name": "plain", "type": "string"},  # read as ["null", "string"]
    {"name": "color", "type": COLOR},  # BLUE unknown to the reader: its default
    {"name": "inner", "type": INNER},  # a nested record losing a field
    {"name": "removed_list", "type": {"type": "array", "items": "Inner"}},
    {"name": "removed_map", "type": {"type": "map", "values": ["null", "double"]}},
    {"name": "removed_ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "blob", "type": "bytes"},
    {"name": "ratio", "type": "float"},
    {"name": "flags", "type": {"type": "map", "values": "boolean"}},
    {"name": "colors", "type": {"type": "array", "items": "Color"}},
    {"name": "maybe", "type": ["null", "Inner"]},
    {"name": "json", "type": {"type": "string", "logicalType": "json"}},
    {"name": "old_name", "type": "long"},
]}
READER = {"type": "record", "name": "Rec", "namespace": "t", "fields": [
    {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "added_list", "type": {"type": "array", "items": "string"}, "default": ["a"]},
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "n", "type": "long"},
    {"name": "plain", "type": ["null", "string"], "default": None},
    {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "OTHER"],
                               "default": "OTHER"}},
    {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
        {"name": "x", "type": "int"}, {"name": "added", "type": ["null", "string"], "default": None}]}},
    {"name": "blob", "type": "bytes"},
    {"name": "ratio", "type": "float"},
    {"name": "flags", "type": {"type": "map", "values": "boolean"}},
    {"name": "colors", "type": {"type": "array", "items": "Color"}},
    {"name": "maybe", "type": ["null", "Inner"]},
    {"name": "json", "type": {"type": "string", "logicalType": "json"}},
    {"name": "new_name", "aliases": ["old_name"], "type": "long"},
    {"name": "added_obj", "type": {"type": "map", "values": "int"}, "default": {"k": 1}},
]}


@settings(FAST, max_examples=100)
@given(value=datum(WRITER, {}))
def test_every_supported_resolution_rule_reads_as_fastavro_reads_it(value: dict[str, Any]) -> None:
    writer, reader = avro_files.parse(WRITER), avro_files.parse(READER)
    body = written(WRITER, value)
    try:
        want = fastavro_read(body, writer, reader)
    except fastavro.read.SchemaResolutionError:
        # BLUE somewhere fastavro does not resolve (an array of the enum keeps the writer's
        # symbols only when the reader has them; its default applies the same way): the same
        # record must be unreadable here too.
        with pytest.raises(KeyError):
            compile_reader(writer, reader)(body)
        return
    got = compile_reader(writer, reader)(body)
    assert_same(got, want)
    got["added_list"].append("b")  # defaults are copies, never shared between records
    assert compile_reader(writer, reader)(body)["added_list"] == ["a"]


def test_a_symbol_the_reader_lacks_without_a_default_makes_the_record_unreadable() -> None:
    writer = {"type": "record", "name": "R", "fields": [{"name": "c", "type": COLOR}]}
    reader = {"type": "record", "name": "R", "fields": [
        {"name": "c", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}}]}
    fn = compile_reader(avro_files.parse(writer), avro_files.parse(reader))
    assert fn(written(writer, {"c": "GREEN"})) == {"c": "GREEN"}
    with pytest.raises(KeyError):
        fn(written(writer, {"c": "BLUE"}))


@pytest.mark.parametrize(("writer_type", "reader_type"), [
    (["null", "string", "long"], ["null", "string", "long"]),  # a union of three
    ({"type": "fixed", "name": "F", "size": 4}, {"type": "fixed", "name": "F", "size": 4}),
    ("string", "bytes"),  # promotions other than int -> long
    ("int", "double"),
    (["null", "string"], "string"),  # a nullable writer read as a plain type
    ({"type": "long", "logicalType": "time-micros"}, {"type": "long", "logicalType": "time-micros"}),
])
def test_pairs_the_generator_does_not_support_fail_to_compile(writer_type: Any, reader_type: Any) -> None:
    writer = {"type": "record", "name": "R", "fields": [{"name": "f", "type": writer_type}]}
    reader = {"type": "record", "name": "R", "fields": [{"name": "f", "type": reader_type}]}
    with pytest.raises(UnsupportedSchemaError):
        compile_reader(avro_files.parse(writer), avro_files.parse(reader))


def test_a_reader_field_without_default_fails_to_compile() -> None:
    writer = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}
    reader = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}, {"name": "b", "type": "int"}]}
    with pytest.raises(UnsupportedSchemaError, match="no default"):
        compile_reader(avro_files.parse(writer), avro_files.parse(reader))


def test_the_codec_reads_a_pair_the_generator_cannot_compile_with_fastavro() -> None:
    """An old StatusChanged carrying a field of a three-branch union (which the current schema
    drops): the generator refuses the pair, fastavro skips the field."""
    old = copy.deepcopy(json.loads((Path(avro_files.SCHEMA_DIR) / "history" / "compute.events.StatusChanged.v1.avsc").read_text()))
    old["fields"].append({"name": "odd", "type": ["null", "string", "long"], "default": None})
    parsed_old, current = avro_files.parse(old), avro_files.parsed_schema(StatusChanged.avro_name)
    with pytest.raises(UnsupportedSchemaError):
        compile_reader(parsed_old, current)
    value = copy.deepcopy(build(StatusChanged, False).to_avro())
    value = {f["name"]: value.get(f["name"]) for f in old["fields"] if f["name"] != "odd"} | {"odd": 7}
    value["envelope"] = {k: v for k, v in value["envelope"].items()
                         if k in {f["name"] for f in old["fields"][0]["type"]["fields"]}}
    body = written(old, value)
    codec = EventCodec(extra_writer_schemas=[old])
    name, record = codec.decode_dict(single_object_prefix(avro_files.fingerprint(parsed_old)) + body)
    assert codec._readers[id(codec._writer_schema(codec.framing, avro_files.fingerprint(parsed_old)))][1] is None
    assert_same(record, fastavro_read(body, parsed_old, current))


# ------------------------------------------------------------------ bad bodies


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_truncated_body_raises_decode_error(model: type[AvroRecord]) -> None:
    codec = EventCodec()
    framed = codec.encode(build(model, True))
    for end in range(10, len(framed)):  # past the 10-byte single-object header
        with pytest.raises(DecodeError):
            codec.decode_dict(framed[:end])


@settings(FAST, max_examples=150)
@given(model=st.sampled_from(MODELS), garbage=st.binary(max_size=64), cut=st.integers(0, 400))
def test_garbage_raises_decode_error_or_reads_as_fastavro_reads_it(
        model: type[AvroRecord], garbage: bytes, cut: int) -> None:
    """A body that is part record, part noise: never another exception; where the generated
    reader accepts it, fastavro reads the same record from it."""
    codec = codec_knowing()
    framed = codec.encode(build(model, False))
    data = framed[: 10 + cut] + garbage
    try:
        _, record = codec.decode_dict(data)
    except DecodeError:
        return
    assert_same(record, fastavro_read(data[10:], avro_files.parsed_schema(model.avro_name)))


def test_a_record_read_at_an_offset_is_the_record() -> None:
    event = StatusChanged(envelope=build(StatusChanged, False).envelope, status="QUEUED")
    body = fastavro_bytes(event)
    parsed = avro_files.parsed_schema(event.avro_name)
    assert compile_reader(parsed)(b"xyz" + body, 3) == fastavro_read(body, parsed)
    assert isinstance(compile_reader(parsed)(body)["envelope"]["event_id"], uuid.UUID)
