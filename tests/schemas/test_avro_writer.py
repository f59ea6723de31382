"""The generated Avro writers (``schemas/avro_writer.py``) write exactly what fastavro writes.

For every top-level event: a fully populated instance, a minimal one (required fields only) and
hypothesis-generated ones (strategies built from the models' annotations and constraints) give
the same bytes as ``fastavro.schemaless_writer(..., model.to_avro())``, and fastavro reads them
back to an equal model. Edge values (empty and unicode strings, 64-bit extremes, pre-1970 and
microsecond timestamps, empty arrays, nested JSON) are pinned explicitly too; a synthetic record
covers maps, negative longs and short-name references; unsupported schemas fail to compile.
"""

from __future__ import annotations

import enum
import io
import struct
import types
import typing
import uuid
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from typing import Annotated, Any, ClassVar, Literal

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import Field
from pydantic.fields import FieldInfo

from schemas import avro_files
from schemas.avro_writer import UnsupportedSchemaError, _long, _micros, compile_writer, micros_varint, split_template
from schemas.codec import EventCodec
from schemas.enums import TaskStatus, TaskType
from schemas.events import (
    EditingTaskSubmitted,
    Envelope,
    EvaluationRecorded,
    GenerationTaskSubmitted,
    StatusChanged,
    TaskResult,
    TaskSubmitted,
    all_event_models,
)
from schemas.framing import single_object_prefix
from schemas.records import URL_SCHEMES, WEBHOOK_SCHEMES, AvroRecord, JsonObject, Url, UtcDatetime, UuidStr, WebhookUrl
from schemas.task_params import Prompt, ProviderConfig, ReferenceImage

MODELS = all_event_models()
UTC = UTC
# Text without lone surrogates (neither writer can UTF-8 encode those; see the test below).
TEXT = st.characters(exclude_categories=("Cs",))
UNICODE = "Grüße, 世界! 🎉 e\u0301 \u00a0\t\n"


def fastavro_bytes(event: AvroRecord) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, avro_files.parsed_schema(event.avro_name), event.to_avro())
    return buf.getvalue()


def compiled_bytes(event: AvroRecord) -> bytes:
    return compile_writer(type(event), avro_files.schema_json(event.avro_name))(event)


def assert_same(event: AvroRecord) -> None:
    body = compiled_bytes(event)
    assert body == fastavro_bytes(event)
    record = fastavro.schemaless_reader(io.BytesIO(body), avro_files.parsed_schema(event.avro_name), None)
    assert type(event).from_avro(record) == event


# --------------------------------------------------------------------------- annotations


SPECIAL = [Url, WebhookUrl, UuidStr, JsonObject, UtcDatetime, Prompt, ProviderConfig]


def unpack(ann: Any) -> tuple[Any, dict[str, Any], bool]:
    """(the type or SPECIAL alias, its constraints, whether None is allowed)."""
    cons: dict[str, Any] = {}
    optional = False
    while True:
        if any(ann == s for s in SPECIAL):
            return ann, cons, optional
        origin = typing.get_origin(ann)
        if origin is Annotated:
            ann, *meta = typing.get_args(ann)
            for m in meta:
                for c in m.metadata if isinstance(m, FieldInfo) else [m]:
                    for key in ("ge", "gt", "le", "lt", "min_length"):
                        if getattr(c, key, None) is not None:
                            cons[key] = getattr(c, key)
        elif origin in (typing.Union, types.UnionType):
            ann, optional = next(a for a in typing.get_args(ann) if a is not type(None)), True
        else:
            return ann, cons, optional


def hints(model: type[AvroRecord]) -> dict[str, Any]:
    return typing.get_type_hints(model, include_extras=True)


def bounds(cons: dict[str, Any], lo: Any, hi: Any) -> tuple[Any, Any]:
    return cons.get("ge", cons.get("gt", lo)), cons.get("le", cons.get("lt", hi))


# --------------------------------------------------------------------------- fixed instances

FULL_SPECIAL = {
    0: "https://cdn.example.com/é/look-001.png",
    1: "https://hooks.example.com/done?x=1",
    3: {"guidance_scale": 3.5, "loras": [{"name": "ünï", "w": 0.8}, None, True], "deep": {"a": {"b": [1, -2, "🎉"]}}},
    4: datetime(2024, 5, 17, 12, 30, 0, 123456, tzinfo=UTC),
    5: "A woman in a blue dress, 世界 🎉",
    6: {"guidance_scale": 3.5, "loras": [{"name": "ünï", "w": 0.8}, None, True], "deep": {"a": {"b": [1, -2, "🎉"]}}},
}


def value(ann: Any, full: bool) -> Any:
    """A valid value of ``ann``: rich when ``full``, else the least that validates."""
    base, cons, _ = unpack(ann)
    for i, special in enumerate(SPECIAL):
        if base == special:
            return str(uuid.uuid4()) if i == 2 else FULL_SPECIAL[i]
    origin = typing.get_origin(base)
    if origin is list:
        return [value(typing.get_args(base)[0], full) for _ in range(2 if full else 0)]
    if origin is Literal:
        return typing.get_args(base)[-1]
    if isinstance(base, type) and issubclass(base, AvroRecord):
        return build(base, full)
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return list(base)[-1]
    if base is bool:
        return True
    if base is int:
        lo, hi = bounds(cons, -(2**31), 2**31 - 1)
        return max(lo, min(hi, 300 if full else 1))
    if base is float:
        lo, hi = bounds(cons, -1e6, 1e6)
        return lo + (hi - lo) * 0.3 if hi < 1e6 else lo + 1.25
    if base is str:
        return UNICODE if full else "x" * cons.get("min_length", 0)
    raise AssertionError(f"no value for {ann!r}")


def build(model: type[AvroRecord], full: bool) -> AvroRecord:
    data = {
        name: value(ann, full)
        for name, ann in hints(model).items()
        if name in model.model_fields and (full or model.model_fields[name].is_required())
    }
    if issubclass(model, TaskSubmitted):  # the envelope must name the params' task type
        data["envelope"] = data["envelope"].model_copy(update={"task_type": model.task_type})
    return model(**data)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("full", [True, False], ids=["full", "minimal"])
def test_fixed_instances_match_fastavro(model: type[AvroRecord], full: bool) -> None:
    event = build(model, full)
    if full:  # really full: every optional record and list is present
        assert None not in event.model_dump().values() and [] not in event.model_dump().values()
    assert_same(event)


def _envelope(**changes: Any) -> Envelope:
    base = dict(event_id=str(uuid.uuid4()), task_id=str(uuid.uuid4()), task_type=TaskType.GENERATION,
                occurred_at=datetime(2024, 1, 1, tzinfo=UTC), source="producer")
    return Envelope(**{**base, **changes})


@pytest.mark.parametrize("when", [
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(1900, 2, 28, 1, 2, 3, 1, tzinfo=UTC),
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2024, 5, 17, 12, 30, 0, 999999, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
    datetime(1970, 1, 1, 0, 0, 0, 8191, tzinfo=UTC),  # the last timestamp that fits in two bytes
])
def test_timestamps(when: datetime) -> None:
    assert_same(StatusChanged(envelope=_envelope(occurred_at=when, attempt=2**31 - 1), status=TaskStatus.QUEUED))


def test_edge_values() -> None:
    metadata = {"model": "", "provider": UNICODE, "timing_ms": 2**63 - 1, "duration": float("inf")}
    result = TaskResult(output_urls=[], seed=2**63 - 1, result_text="", metadata=metadata)
    assert_same(StatusChanged(envelope=_envelope(source=UNICODE, origin_zone=""), status=TaskStatus.COMPLETED,
                              message="", result=result, worker_id="x" * 10_000, generation_id=UNICODE * 500))
    assert_same(EvaluationRecorded(envelope=_envelope(), generation_id="", shot_id=UNICODE, evaluated_attempt=1,
                                   score=0.0, reasons=[], evaluator="", accepted_task_id=""))
    assert_same(EvaluationRecorded(envelope=_envelope(), generation_id="g", shot_id="s", evaluated_attempt=7,
                                   score=1.0, reasons=["", UNICODE, "x" * 9000] * 50, evaluator="e"))
    params = {"prompt": "p", "seed": 0, "provider_config": {}, "width": 4096, "height": 64}
    assert_same(GenerationTaskSubmitted(envelope=_envelope(), params=params, idempotency_key=""))
    params = {"prompt": "p", "seed": 2**63 - 1, "provider_config": {"a": {"b": {"c": [[], {}, "é", 1e300, -(2**70)]}}}}
    assert_same(GenerationTaskSubmitted(envelope=_envelope(), params=params))
    images = [ReferenceImage(url=f"s3://bucket/{i}/ü.png", type="garment") for i in range(200)]
    edit = {"base_image_url": "file:///tmp/a.png", "reference_images": images}
    assert_same(EditingTaskSubmitted(envelope=_envelope(task_type=TaskType.EDITING), params=edit))


def test_lone_surrogates_fail_like_fastavro() -> None:
    event = StatusChanged(envelope=_envelope(), status=TaskStatus.PENDING, message="\ud800")
    with pytest.raises(UnicodeEncodeError):
        fastavro_bytes(event)
    with pytest.raises(UnicodeEncodeError):
        compiled_bytes(event)


# --------------------------------------------------------------------------- hypothesis

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(TEXT),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(TEXT, max_size=5), inner, max_size=3),
    max_leaves=8,
)
TEXT_NO_NUL = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
JSON_NO_NUL = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(TEXT_NO_NUL),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(TEXT_NO_NUL, max_size=5), inner, max_size=3),
    max_leaves=8,
)
ZONES = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])


def _url(schemes: tuple[str, ...]) -> st.SearchStrategy[str]:
    rest = st.text(TEXT, min_size=1, max_size=30).filter(str.strip)
    return st.builds("{}://{}".format, st.sampled_from(schemes + tuple(s.upper() for s in schemes)), rest)


SPECIAL_STRATEGIES = [
    _url(URL_SCHEMES),
    _url(WEBHOOK_SCHEMES),
    st.uuids().map(str),
    st.dictionaries(st.text(TEXT, max_size=8), JSON, max_size=4),
    st.datetimes(datetime(2, 1, 1), datetime(9998, 12, 31), timezones=ZONES),
    st.text(TEXT, min_size=1, max_size=40).filter(str.strip),
    # provider_config: no NUL either (PostgreSQL cannot store it; the model refuses it).
    st.dictionaries(st.text(TEXT_NO_NUL, max_size=8), JSON_NO_NUL, max_size=4),
]


def strategy(ann: Any) -> st.SearchStrategy[Any]:
    base, cons, optional = unpack(ann)
    inner = _strategy(base, cons)
    return st.none() | inner if optional else inner


def _strategy(base: Any, cons: dict[str, Any]) -> st.SearchStrategy[Any]:
    for special, strat in zip(SPECIAL, SPECIAL_STRATEGIES):
        if base == special:
            return strat
    origin = typing.get_origin(base)
    if origin is list:
        return st.lists(strategy(typing.get_args(base)[0]), max_size=3)
    if origin is Literal:
        return st.sampled_from(typing.get_args(base))
    if isinstance(base, type) and issubclass(base, AvroRecord):
        return record_strategy(base)
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return st.sampled_from(list(base))
    if base is bool:
        return st.booleans()
    if base is int:
        return st.integers(*bounds(cons, -(2**31), 2**31 - 1))
    if base is float:
        lo, hi = bounds(cons, None, None)
        return st.floats(lo, hi, allow_nan=False, exclude_min="gt" in cons, exclude_max="lt" in cons)
    if base is str:
        return st.text(TEXT, min_size=cons.get("min_length", 0), max_size=20)
    raise AssertionError(f"no strategy for {base!r}")


@cache
def record_strategy(model: type[AvroRecord], present: tuple[str, ...] = ()) -> st.SearchStrategy[Any]:
    """Instances of ``model``; optional fields in ``present`` are never None."""
    fields = {name: strategy(ann) for name, ann in hints(model).items() if name in model.model_fields}
    for name in present:
        fields[name] = _strategy(*unpack(hints(model)[name])[:2])
    if issubclass(model, TaskSubmitted):
        envelope = st.builds(Envelope, **{n: strategy(a) for n, a in hints(Envelope).items() if n in Envelope.model_fields})
        fields["envelope"] = envelope.map(lambda e: e.model_copy(update={"task_type": model.task_type}))
    return st.builds(model, **fields)


FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@FAST
@given(data=st.data())
def test_generated_instances_match_fastavro(model: type[AvroRecord], data: st.DataObject) -> None:
    assert_same(data.draw(record_strategy(model)))


@settings(FAST, max_examples=150)
@given(st.one_of(
    record_strategy(GenerationTaskSubmitted, ("orchestration",)),
    record_strategy(StatusChanged, ("result", "error")),
    record_strategy(EvaluationRecorded, ("decision",)),
    record_strategy(EditingTaskSubmitted).filter(lambda e: e.params.reference_images),
))
def test_generated_key_events_match_fastavro(event: AvroRecord) -> None:
    assert_same(event)


# --------------------------------------------------------------------------- varints


@given(st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, -1, 63, -64, 64, 8191, 8192, -(2**63), 2**63 - 1]))
def test_long_matches_fastavro(n: int) -> None:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "long", n)
    assert _long(n) == buf.getvalue()


@given(st.datetimes(datetime(1, 1, 1), datetime(9999, 12, 31), timezones=st.just(UTC)))
def test_micros_matches_fastavro(when: datetime) -> None:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, {"type": "long", "logicalType": "timestamp-micros"}, when)
    assert _micros(when) == buf.getvalue()


@given(st.integers(-(2**63) // 2, 2**63 // 2 - 1) | st.sampled_from([0, -1, 8191, 8192, 1_800_000_000_000_000]))
def test_micros_varint_is_the_encoding_of_that_time(n: int) -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    try:
        when = epoch + timedelta(microseconds=n)
    except OverflowError:  # outside years 1..9999: nothing to compare with
        return
    assert micros_varint(n) == _micros(when)


def test_long_out_of_range() -> None:
    for n in (2**63, -(2**63) - 1):
        with pytest.raises(OverflowError):
            _long(n)


# --------------------------------------------------------------------------- other schemas


class Color(enum.Enum):  # not a str Enum: the writer maps its members by identity
    RED = "RED"
    GREEN = "GREEN"


class Inner(AvroRecord):
    avro_name: ClassVar[str] = "test.Inner"
    x: int


class Kitchen(AvroRecord):
    avro_name: ClassVar[str] = "test.Kitchen"
    n: int
    i: Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
    counts: dict[str, int]
    inners: dict[str, Inner]
    color: Color
    colors: list[Color]
    maybe: Inner | None = None
    flag: bool
    ratio: float | None = None


KITCHEN = {
    "type": "record", "name": "Kitchen", "namespace": "test", "fields": [
        {"name": "n", "type": "long"},
        {"name": "i", "type": "int"},
        {"name": "counts", "type": {"type": "map", "values": "long"}},
        {"name": "inners", "type": {"type": "map", "values": {
            "type": "record", "name": "Inner", "fields": [{"name": "x", "type": "long"}]}}},
        {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}},
        {"name": "colors", "type": {"type": "array", "items": "Color"}},  # short name, enclosing namespace
        {"name": "maybe", "type": ["null", "test.Inner"]},
        {"name": "flag", "type": "boolean"},
        {"name": "ratio", "type": [{"type": "double"}, "null"]},  # null second: index 1 for None
    ],
}
LONGS = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=60, deadline=None)
@given(st.builds(
    Kitchen, n=LONGS, i=st.integers(-(2**31), 2**31 - 1), counts=st.dictionaries(st.text(TEXT), LONGS, max_size=3),
    inners=st.dictionaries(st.text(TEXT, max_size=3), st.builds(Inner, x=LONGS), max_size=2), color=st.sampled_from(Color),
    colors=st.lists(st.sampled_from(Color), max_size=3), maybe=st.none() | st.builds(Inner, x=LONGS),
    flag=st.booleans(), ratio=st.none() | st.floats(),
))
def test_maps_negative_longs_and_names(kitchen: Kitchen) -> None:
    data = kitchen.model_dump(mode="python")
    data["color"], data["colors"] = kitchen.color.value, [c.value for c in kitchen.colors]
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(KITCHEN, named_schemas={}), data)
    assert compile_writer(Kitchen, KITCHEN)(kitchen) == buf.getvalue()


def _with_field(avro_type: Any, name: str = "n") -> dict[str, Any]:
    return {"type": "record", "name": "test.Inner", "fields": [{"name": name, "type": avro_type}]}


@pytest.mark.parametrize("avro_type, message", [
    ("float", "float is not supported"),
    ("bytes", "bytes is not supported"),
    ({"type": "fixed", "name": "F", "size": 4}, "'fixed' is not supported"),
    ({"type": "int", "logicalType": "date"}, "logicalType 'date'"),
    (["null", "int", "string"], "only a union of null and one other type"),
    (["int", "string"], "only a union of null and one other type"),
    ("test.Nowhere", "unknown type name"),
    (["null", "test.Inner"], "recursive type test.Inner"),
])
def test_unsupported_schemas_fail_at_compile_time(avro_type: Any, message: str) -> None:
    with pytest.raises(UnsupportedSchemaError, match=message):
        compile_writer(Inner, _with_field(avro_type, "x"))


def test_schema_and_model_must_agree() -> None:
    with pytest.raises(UnsupportedSchemaError, match="has no field 'y'"):
        compile_writer(Inner, _with_field("long", "y"))
    with pytest.raises(UnsupportedSchemaError, match="mirrors test.Inner, not test.Other"):
        compile_writer(Inner, {"type": "record", "name": "test.Other", "fields": []})


def test_invalid_value_raises_value_error() -> None:
    event = StatusChanged.model_construct(envelope=_envelope(), status="NOT_A_STATUS")
    with pytest.raises(ValueError, match="cannot write compute.events.StatusChanged"):
        compiled_bytes(event)


def test_writer_is_cached_and_shows_its_source() -> None:
    schema = avro_files.schema_json(StatusChanged.avro_name)
    writer = compile_writer(StatusChanged, schema)
    assert compile_writer(StatusChanged, schema) is writer
    assert "def write_StatusChanged(rec, prefix=b''):" in writer.__avro_source__
    assert writer(build(StatusChanged, True), b"PREFIX").startswith(b"PREFIX")


# --------------------------------------------------------------------------- the codec


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_codec_encodes_with_the_compiled_writer(model: type[AvroRecord]) -> None:
    codec = EventCodec()
    event = build(model, True)
    data = codec.encode(event)
    prefix = single_object_prefix(avro_files.fingerprint(avro_files.parsed_schema(model.avro_name)))
    assert data == prefix + fastavro_bytes(event)
    assert codec.decode(data, expect=model) == event


# --------------------------------------------------------------------------- fields writers and templates


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("full", [True, False], ids=["full", "minimal"])
def test_fields_writers_write_their_part_of_the_record(model: type[AvroRecord], full: bool) -> None:
    schema = avro_files.schema_json(model.avro_name)
    names = tuple(f["name"] for f in schema["fields"])
    event = build(model, full)
    whole = compile_writer(model, schema)(event, b"P")
    for cut in range(1, len(names)):  # any split into a head and a tail run of fields
        head = compile_writer(model, schema, names[:cut])(*(getattr(event, n) for n in names[:cut]), prefix=b"P")
        tail = compile_writer(model, schema, names[cut:])
        assert tail(*(getattr(event, n) for n in names[cut:]), prefix=head) == whole
    everything = compile_writer(model, schema, names)
    assert everything(*(getattr(event, n) for n in names), prefix=b"P") == whole
    assert compile_writer(model, schema, names) is everything


def test_fields_writers_take_consecutive_fields_only() -> None:
    schema = avro_files.schema_json(StatusChanged.avro_name)
    for fields in [("envelope", "progress"), ("status", "nope"), (), ("nope",)]:
        with pytest.raises(UnsupportedSchemaError, match="not consecutive fields"):
            compile_writer(StatusChanged, schema, fields)
    writer = compile_writer(StatusChanged, schema, ("status", "progress"))
    assert "def write_StatusChanged_status_to_progress(f_status, f_progress, prefix=b''):" in writer.__avro_source__
    assert writer(TaskStatus.QUEUED, 0.5) == _long(1) + b"\x02" + struct.pack("<d", 0.5)
    with pytest.raises(ValueError, match="cannot write the fields status, progress of compute.events.StatusChanged"):
        writer("NOT_A_STATUS", None)


def test_split_template_cuts_at_each_hole_once_and_in_order() -> None:
    assert split_template(b"aXbYc", [b"X", b"Y"]) == (b"a", b"b", b"c")
    assert split_template(b"XY", [b"X", b"Y"]) == (b"", b"", b"")
    assert split_template(b"abc", []) == (b"abc",)
    for holes in ([b"Z"], [b"X", b"X"], [b"Y", b"X"], [b""]):
        with pytest.raises(ValueError):
            split_template(b"aXbYcX" if holes == [b"X", b"X"] else b"aXbYc", holes)
