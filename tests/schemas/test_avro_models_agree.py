"""The Avro schemas in ``schemas/avro`` and the pydantic models in ``schemas/`` say the same thing.

Walks each top-level event's Avro schema and its pydantic model together, field by field; checks
every field is documented, the parameter records match the seed tables, the enums match
``schemas/enums.py``, and a fully populated event of every type survives
``to_avro`` -> fastavro -> ``from_avro``.
"""

from __future__ import annotations

import enum
import io
import json
import types
import typing
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
import fastavro
import pytest
from fastavro.schema import load_schema
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from schemas import enums
from schemas.events import TASK_SUBMITTED_MODELS, TaskSubmitted, all_event_models, load_avro_schema
from schemas.records import AVRO_DIR, AvroRecord
from schemas.task_params import PARAMS_MODELS
from schemas.workflow_events import WorkflowCommand, WorkflowStatus, WorkflowStepStatus

EVENT_MODELS = all_event_models()
INT_LIMITS = {"int": 2**31 - 1, "long": 2**63 - 1}
PROVIDER = ["provider_type", "provider_config"]

# The seed ("Compute Server Tasks") parameter tables, in the seed's order: the reference.
SEED_PARAMETERS: dict[str, list[str]] = {
    "GENERATION": [
        "prompt", "width", "height", "seed", "subject_lora_weight", "product_lora_weight",
        "style_lora_weight", "product2_lora_weight", "reference_image_url",
        "reference_image_strength", "provider_type", "provider_config",
    ],
    "EDITING": ["base_image_url", "reference_images", "prompt", "mask_url", "strength", "width", "height"],
    "REFINE": [
        "base_image_url", "target_width", "target_height", "upscale_enabled", "upscale_factor",
        "upscale_steps", "upscale_denoise", "upscale_prompt", "face_detail_enabled",
        "face_detail_steps", "face_detail_denoise", "face_detail_prompt",
    ],
    "VIDEO_GENERATION": ["base_image_url", "motion_bucket_id", "fps", "duration", "seed"],
    "BACKGROUND_FIX": ["base_image_url", "background_prompt", "background_image_url", "mask_expansion", "blend_strength"],
    "FACE_ENHANCER": ["base_image_url", "strength", "prompt", "preserve_identity"],
    "IMAGE_ADJUSTER": ["base_image_url", "brightness", "contrast", "saturation", "warmth", "prompt"],
    "DETAIL_ENHANCER": ["base_image_url", "strength", "prompt", "preserve_original"],
    "BACKGROUND_REMOVE": ["image_url", "output_format"],
    "LLM_INTERACTION": ["prompt", "system_prompt", "max_tokens", "temperature"],
}
ENUMS = [enums.TaskType, enums.TaskStatus, enums.ErrorCode, enums.GenerationType,
         enums.GenerationStrategy, enums.EvaluationDecision,
         WorkflowStatus, WorkflowStepStatus, WorkflowCommand]


# --------------------------------------------------------------------------- helpers


def _named(schema: dict[str, Any]) -> dict[str, Any]:
    return schema["__named_schemas"]


def _resolve(avro_type: Any, named: dict[str, Any]) -> Any:
    if isinstance(avro_type, str) and avro_type in named:
        return named[avro_type]
    return avro_type


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without Annotated / Optional, whether None is allowed)."""
    optional = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = typing.get_args(annotation)
            rest = [a for a in args if a is not type(None)]
            assert len(rest) == 1, f"only Optional unions are allowed, got {annotation}"
            optional = optional or len(rest) < len(args)
            annotation = rest[0]
        else:
            return annotation, optional


def _default(info: FieldInfo) -> Any:
    return info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]


def _assert_type_agrees(path: str, avro_type: Any, annotation: Any, named: dict[str, Any]) -> None:
    avro_type = _resolve(avro_type, named)
    origin = typing.get_origin(annotation)
    if isinstance(avro_type, str):
        expected = {"string": (str,), "int": (int,), "long": (int,), "double": (float,), "boolean": (bool,)}[avro_type]
        if origin is Literal:  # e.g. output_format: a restricted string
            assert all(isinstance(v, expected) for v in typing.get_args(annotation)), path
            return
        assert annotation in expected, f"{path}: Avro {avro_type} vs {annotation}"
        return
    kind = avro_type["type"]
    logical = avro_type.get("logicalType")
    if logical == "uuid":
        assert annotation is str, f"{path}: uuid vs {annotation}"
    elif logical == "timestamp-micros":
        assert annotation is datetime, f"{path}: timestamp-micros vs {annotation}"
    elif logical == "json":
        assert kind == "string" and (origin is dict or annotation is dict), f"{path}: json vs {annotation}"
    elif kind == "enum":
        assert isinstance(annotation, type) and issubclass(annotation, enum.Enum), path
        assert avro_type["name"].rsplit(".", 1)[-1] == annotation.__name__, path
        assert avro_type["symbols"] == [m.value for m in annotation], path
    elif kind == "array":
        assert origin is list, f"{path}: array vs {annotation}"
        item, item_optional = _unwrap(typing.get_args(annotation)[0])
        assert not item_optional, path
        _assert_type_agrees(f"{path}[]", avro_type["items"], item, named)
    elif kind == "record":
        assert isinstance(annotation, type) and issubclass(annotation, AvroRecord), f"{path}: record vs {annotation}"
        _assert_record_agrees(path, avro_type, annotation, named)
    else:
        assert kind in ("string", "int", "long", "double", "boolean"), f"{path}: unexpected Avro type {avro_type}"
        _assert_type_agrees(path, kind, annotation, named)


def _assert_record_agrees(path: str, record: dict[str, Any], model: type[AvroRecord], named: dict[str, Any]) -> None:
    assert record["name"] == model.avro_name, f"{path}: Avro {record['name']} vs model {model.avro_name}"
    avro_fields = record["fields"]
    model_fields = model.model_fields
    assert [f["name"] for f in avro_fields] == list(model_fields), f"{path}: field names/order differ"
    for field in avro_fields:
        name = field["name"]
        info = model_fields[name]
        where = f"{path}.{name}"
        has_default = "default" in field
        assert has_default == (not info.is_required()), f"{where}: optional in one, required in the other"
        if has_default:
            assert field["default"] == _default(info), f"{where}: defaults {field['default']!r} vs {_default(info)!r}"
        annotation, optional = _unwrap(info.annotation)
        avro_type = field["type"]
        if isinstance(avro_type, list):
            assert avro_type[0] == "null" and len(avro_type) == 2, f"{where}: unions are [null, T]"
            assert optional and field["default"] is None, f"{where}: nullable in Avro only"
            avro_type = avro_type[1]
        else:
            assert not optional, f"{where}: nullable in the model only"
        _assert_type_agrees(where, avro_type, annotation, named)
        primitive = avro_type if isinstance(avro_type, str) else avro_type.get("type")
        if primitive in INT_LIMITS and not (isinstance(avro_type, dict) and avro_type.get("logicalType")):
            # Everything that validates must be writable: integers are bounded to the Avro width.
            bounds, limit = _bounds(info.annotation, info), INT_LIMITS[primitive]
            assert bounds.get("le", bounds.get("lt", limit + 1)) <= limit, f"{where}: no upper bound within Avro {primitive}"
            assert bounds.get("ge", bounds.get("gt", -limit - 2)) >= -limit - 1, f"{where}: no lower bound within Avro {primitive}"


def _walk_fields(avro_type: Any, named: dict[str, Any], seen: set[str], path: str):
    avro_type = _resolve(avro_type, named)
    if isinstance(avro_type, list):
        for branch in avro_type:
            yield from _walk_fields(branch, named, seen, path)
    elif isinstance(avro_type, dict):
        if avro_type["type"] == "array":
            yield from _walk_fields(avro_type["items"], named, seen, path)
        elif avro_type["type"] == "record" and avro_type["name"] not in seen:
            seen.add(avro_type["name"])
            for field in avro_type["fields"]:
                yield f"{avro_type['name']}.{field['name']}", field
                yield from _walk_fields(field["type"], named, seen, path)


# --------------------------------------------------------------------------- the schema files


def test_sixteen_event_models():
    assert len(EVENT_MODELS) == 16
    assert len({m.avro_name for m in EVENT_MODELS}) == 16


def test_each_file_is_named_after_its_type_and_loads_on_its_own():
    files = sorted(AVRO_DIR.glob("*.avsc"))
    assert len(files) == 35  # 9 enums, 10 shared records, 16 events
    for path in files:
        raw = json.loads(path.read_text())
        assert raw["namespace"] == "compute.events"
        assert f"{raw['namespace']}.{raw['name']}.avsc" == path.name
        load_schema(str(path))  # references resolve from sibling files


@pytest.mark.parametrize("enum_cls", ENUMS, ids=lambda e: e.__name__)
def test_avro_enums_equal_python_enums(enum_cls: type[enum.Enum]):
    raw = json.loads((AVRO_DIR / f"compute.events.{enum_cls.__name__}.avsc").read_text())
    assert raw["type"] == "enum" and raw.get("doc")
    assert raw["symbols"] == [m.value for m in enum_cls]


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
def test_every_avro_field_has_a_doc(model: type[AvroRecord]):
    schema = load_avro_schema(model.avro_name)
    fields = list(_walk_fields(schema, _named(schema), set(), model.avro_name))
    assert fields
    undocumented = [name for name, field in fields if not str(field.get("doc", "")).strip()]
    assert not undocumented


def test_load_avro_schema_accepts_short_names_and_rejects_unknown():
    assert load_avro_schema("StatusChanged") is load_avro_schema("compute.events.StatusChanged")
    with pytest.raises(KeyError, match="known"):
        load_avro_schema("compute.events.Nope")


# --------------------------------------------------------------------------- models agree


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
def test_model_agrees_with_avro_schema(model: type[AvroRecord]):
    schema = load_avro_schema(model.avro_name)
    _assert_record_agrees(model.__name__, schema, model, _named(schema))


@pytest.mark.parametrize("task_type", list(enums.TaskType), ids=lambda t: t.value)
def test_params_are_exactly_the_seed_table(task_type: enums.TaskType):
    expected = SEED_PARAMETERS[task_type.value]
    if expected[-2:] != PROVIDER:
        expected = [*expected, *PROVIDER]
    params_model = PARAMS_MODELS[task_type]
    assert list(params_model.model_fields) == expected
    assert params_model.task_type is task_type
    submitted = TASK_SUBMITTED_MODELS[task_type]
    assert submitted.task_type is task_type
    assert submitted.model_fields["params"].annotation is params_model
    schema = load_avro_schema(submitted.avro_name)
    params_record = schema["fields"][1]["type"]
    assert params_record["name"] == params_model.avro_name
    assert [f["name"] for f in params_record["fields"]] == expected


# --------------------------------------------------------------------------- round trip


def _bounds(annotation: Any, info: FieldInfo | None) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def collect(items):
        for item in items:
            if isinstance(item, FieldInfo):
                collect(item.metadata)
            for key in ("ge", "gt", "le", "lt"):
                if isinstance(item, getattr(annotated_types, key.capitalize())):
                    found[key] = getattr(item, key)

    if info is not None:
        collect(info.metadata)
    stack = [annotation]
    while stack:
        current = stack.pop()
        if typing.get_origin(current) is Annotated:
            collect(typing.get_args(current)[1:])
            stack.append(typing.get_args(current)[0])
        elif typing.get_origin(current) in (typing.Union, types.UnionType):
            stack.extend(typing.get_args(current))
    return found


def _sample(name: str, annotation: Any, info: FieldInfo | None = None) -> Any:
    """A valid, non-default value for a field: every optional field gets a value."""
    base, _ = _unwrap(annotation)
    origin = typing.get_origin(base)
    if origin is Literal:
        return typing.get_args(base)[-1]
    if origin is list:
        return [_sample(name, typing.get_args(base)[0]), _sample(name, typing.get_args(base)[0])]
    if origin is dict:
        return {"guidance_scale": 3.5, "nested": {"list": [1, "two", None, True], "ünïcode": "✓"}}
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return list(base)[-1]
    if isinstance(base, type) and issubclass(base, BaseModel):
        return _populate(base)
    if base is datetime:
        return datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)
    if base is bool:
        return True
    bounds = _bounds(annotation, info)
    low = bounds.get("ge", bounds.get("gt", 1))
    high = bounds.get("le", bounds.get("lt", low + 1000))
    if base is int:
        return (int(low) + int(high)) // 2 + 1
    if base is float:
        return (low + high) / 2 + 0.125
    assert base is str, f"no sample for {name}: {annotation}"
    if name == "webhook_url":
        return "https://hooks.example.com/done"
    if "url" in name:
        return "s3://bucket/some/image.png"
    if name.endswith("_id") and name not in ("worker_id", "shot_id") or name in ("event_id",):
        return str(uuid.uuid4())
    return f"{name} value ✓"


def _populate(model: type[BaseModel]) -> dict[str, Any]:
    return {name: _sample(name, info.annotation, info) for name, info in model.model_fields.items()}


def _full_instance(model: type[AvroRecord]) -> AvroRecord:
    data = _populate(model)
    if issubclass(model, TaskSubmitted):
        data["envelope"]["task_type"] = model.task_type
    return model.model_validate(data)


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("union_hints", [False, True])
def test_round_trip_through_fastavro(model: type[AvroRecord], union_hints: bool):
    original = _full_instance(model)
    unset = [name for name, value in original.model_dump().items() if value is None]
    assert not unset, f"sample left {unset} unset"
    schema = load_avro_schema(model.avro_name)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, original.to_avro(union_hints=union_hints))
    buffer.seek(0)
    decoded = fastavro.schemaless_reader(buffer, schema)
    again = model.from_avro(decoded)
    assert again == original
    if issubclass(model, TaskSubmitted):
        assert TaskSubmitted.from_avro(decoded) == original  # dispatch on envelope.task_type


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
def test_minimal_instance_round_trips_with_defaults(model: type[AvroRecord]):
    data = {name: _sample(name, info.annotation, info) for name, info in model.model_fields.items() if info.is_required()}
    if issubclass(model, TaskSubmitted):
        params = model.model_fields["params"].annotation
        data["params"] = {n: _sample(n, i.annotation, i) for n, i in params.model_fields.items() if i.is_required()}
        data["envelope"]["task_type"] = model.task_type
    original = model.model_validate(data)
    schema = load_avro_schema(model.avro_name)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, original.to_avro())
    buffer.seek(0)
    assert model.from_avro(fastavro.schemaless_reader(buffer, schema)) == original


def test_to_avro_is_plain_values():
    event = _full_instance(TASK_SUBMITTED_MODELS[enums.TaskType.GENERATION])
    data = event.to_avro()
    assert type(data["envelope"]["task_type"]) is str
    assert type(data["orchestration"]["generation_type"]) is str
    assert json.loads(data["params"]["provider_config"]) == event.params.provider_config
    assert data["envelope"]["occurred_at"].tzinfo is UTC
    hinted = event.to_avro(union_hints=True)
    assert hinted["orchestration"][0] == "compute.events.Orchestration"


def test_schema_files_are_the_package_data_path():
    # pyproject ships schemas/avro/*.avsc as package data; the loader must read from there.
    assert Path(__file__).resolve().parents[2] / "schemas" / "avro" == AVRO_DIR
