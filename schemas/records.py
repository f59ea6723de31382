"""The base of every pydantic model that mirrors an Avro record, and the shared field types.

Each Avro record in ``schemas/avro`` has a pydantic twin deriving from :class:`AvroRecord`. The
twin validates (ranges, URL schemes, ids) and converts to and from the plain dicts fastavro
reads and writes. ``tests/schemas/test_avro_models_agree.py`` checks that the two agree field by
field, so a change to one without the other fails the build.
"""

from __future__ import annotations

import enum
import json
import re
import types
import typing
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, JsonValue, WithJsonSchema

from schemas import avro_files  # the one loader of .avsc files

AVRO_NAMESPACE = "compute.events"
AVRO_DIR = avro_files.SCHEMA_DIR

# Inputs are fetched from these schemes only (architecture section 7); anything else
# (ftp:, data:, javascript:, bare paths) is rejected at the contract, before a worker sees it.
URL_SCHEMES = ("http", "https", "s3", "file")
# A webhook is called over HTTP; s3:// or file:// make no sense there.
WEBHOOK_SCHEMES = ("http", "https")
# Avro int is signed 32-bit, long signed 64-bit: every integer field is bounded to fit, so a
# value that validates can always be written.
AVRO_INT_MAX = 2**31 - 1
AVRO_LONG_MAX = 2**63 - 1


# --------------------------------------------------------------------------- field types


def _url_checker(schemes: tuple[str, ...]) -> Callable[[str], str]:
    allowed = frozenset(schemes)
    listed = ", ".join(schemes)

    def check(value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme.lower() not in allowed or not rest.strip():
            raise ValueError(f"must be a URL with scheme {listed} (got {value[:80]!r})")
        return value

    return check


# A character str.strip() keeps: not one of str.isspace()'s, spelled out because "\S" differs
# between Python and ECMA-262 regexes (the OpenAPI document's dialect). A pattern holding it
# states "not blank" (JSON Schema patterns match anywhere in the text).
NON_BLANK = "[^\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"


def _url_schema(schemes: tuple[str, ...]) -> WithJsonSchema:
    """The OpenAPI statement of ``_url_checker(schemes)``: the scheme in any case, ``://``, and
    at least one non-blank character after it (ECMA-262 regex: no inline flags)."""
    either_case = ("".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in s)
                   for s in schemes)
    return WithJsonSchema({"type": "string", "pattern": f"^(?:{'|'.join(either_case)})://[\\s\\S]*{NON_BLANK}",
                           "description": f"a URL with scheme {', '.join(schemes)}"})


# The text of a UUID: 8-4-4-4-12 hex digits, either case (stored lower-case).
UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_UUID_TEXT = re.compile(UUID_PATTERN)


def _uuid_text(value: Any) -> Any:
    """Accept a UUID (fastavro reads logicalType uuid as uuid.UUID) or its 8-4-4-4-12 text (what
    the OpenAPI document states: not the braced, URN or unhyphenated forms); keep text."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        if not _UUID_TEXT.fullmatch(value):
            raise ValueError(f"must be a UUID such as 123e4567-e89b-12d3-a456-426614174000 (got {value[:80]!r})")
        return value.lower()
    return value  # not text: let the str validator report the type error


def _json_object_text(value: Any) -> Any:
    """Accept the JSON text the Avro ``json`` logical type carries, as well as the object."""
    if isinstance(value, (str, bytes, bytearray)):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"must be a JSON object (JSON text did not parse: {exc})") from None
    return value


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must be timezone-aware (e.g. 2024-05-17T12:30:00Z); naive times are ambiguous")
    return value.astimezone(UTC)


Url = Annotated[str, AfterValidator(_url_checker(URL_SCHEMES)), _url_schema(URL_SCHEMES)]
"""A non-empty http, https, s3 or file URL."""
WebhookUrl = Annotated[str, AfterValidator(_url_checker(WEBHOOK_SCHEMES)), _url_schema(WEBHOOK_SCHEMES)]
"""An http or https URL."""
UuidStr = Annotated[str, BeforeValidator(_uuid_text),
                    WithJsonSchema({"type": "string", "format": "uuid", "pattern": UUID_PATTERN})]
"""A UUID kept as its canonical lower-case text (Avro: string, logicalType uuid)."""
JsonObject = Annotated[dict[str, JsonValue], BeforeValidator(_json_object_text)]
"""A JSON object (Avro: string, logicalType json, holding the JSON-encoded object)."""
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
"""A timezone-aware instant, normalised to UTC (Avro: long, logicalType timestamp-micros)."""


# --------------------------------------------------------------------------- Avro conversion

# A conversion plan lists, per record type, only the fields whose model_dump() value fastavro
# can't take as it is, so to_avro() is one model_dump() plus a handful of dict writes.
_ENUM, _JSON, _RECORD, _OPT_RECORD, _LIST = range(5)
_Plan = tuple[tuple[str, int, Any], ...]
_PLANS: dict[type, _Plan] = {}
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _strip(annotation: Any) -> tuple[Any, bool]:
    """Drop Annotated[...] and an Optional's None: (what is left, whether None was allowed)."""
    optional = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(rest) != 1:
                raise TypeError(f"unsupported union {annotation!r}: Avro unions here are [null, T]")
            annotation, optional = rest[0], True
        else:
            return annotation, optional


def _step(annotation: Any) -> tuple[int, Any] | None:
    """How one value of this type changes on its way to fastavro; None: it doesn't."""
    annotation, optional = _strip(annotation)
    origin = typing.get_origin(annotation)
    if origin is list:
        inner = _step(typing.get_args(annotation)[0])
        return None if inner is None else (_LIST, inner)
    if origin is dict or annotation is dict:
        return (_JSON, None)
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return (_ENUM, None)
        if issubclass(annotation, AvroRecord):
            if optional:  # may carry a union-branch hint: keep the name
                return (_OPT_RECORD, (annotation.avro_name, _plan(annotation)))
            plan = _plan(annotation)
            return (_RECORD, plan) if plan else None
    return None


def _plan(cls: type[AvroRecord]) -> _Plan:
    """The few fields of ``cls.model_dump()`` (recursively) that need converting, and how."""
    plan = _PLANS.get(cls)
    if plan is None:
        steps = []
        for name, info in cls.model_fields.items():
            step = _step(info.annotation)
            if step is not None:
                steps.append((name, *step))
        plan = _PLANS[cls] = tuple(steps)
    return plan


def _apply(data: dict[str, Any], plan: _Plan, hints: bool) -> None:
    for name, kind, sub in plan:
        value = data[name]
        if value is None:
            continue
        if kind == _ENUM:
            data[name] = value._value_
        elif kind == _RECORD:
            _apply(value, sub, hints)
        elif kind == _JSON:
            data[name] = _dumps(value)
        elif kind == _OPT_RECORD:
            fullname, sub_plan = sub
            if sub_plan:
                _apply(value, sub_plan, hints)
            if hints:
                data[name] = (fullname, value)
        else:
            data[name] = _fix_list(value, sub, hints)


def _fix_list(items: list[Any], step: tuple[int, Any], hints: bool) -> list[Any]:
    kind, sub = step
    if kind == _ENUM:
        return [item._value_ for item in items]
    if kind == _JSON:
        return [_dumps(item) for item in items]
    if kind == _RECORD:
        for item in items:
            _apply(item, sub, hints)
        return items
    if kind == _OPT_RECORD:
        fullname, sub_plan = sub
        for item in items:
            if item is not None and sub_plan:
                _apply(item, sub_plan, hints)
        return [(fullname, item) if hints and item is not None else item for item in items]
    return [None if item is None else _fix_list(item, sub, hints) for item in items]


class AvroRecord(BaseModel):
    """A pydantic model mirroring the Avro record named :attr:`avro_name`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    avro_name: ClassVar[str]
    """The Avro full name, e.g. ``compute.events.GenerationTaskSubmitted``."""

    def to_avro(self, *, union_hints: bool = False) -> dict[str, Any]:
        """A dict ``fastavro.schemaless_writer`` writes with :func:`load_avro_schema` of this type:
        enums as their symbols, datetimes UTC, JSON objects as JSON text.

        ``union_hints=True`` writes each non-null optional record as fastavro's
        ``(avro full name, dict)`` tuple, so the writer picks the union branch without validating
        the whole record first (about a quarter faster to write). Such a dict is for fastavro's
        writers only: :meth:`from_avro` takes plain dicts.
        """
        data = self.model_dump()
        plan = _PLANS.get(type(self))
        if plan is None:
            plan = _plan(type(self))
        if plan:
            _apply(data, plan, union_hints)
        return data

    @classmethod
    def from_avro(cls, data: dict[str, Any]) -> Self:
        """The inverse of :meth:`to_avro`; also accepts what fastavro's readers return
        (uuid.UUID for uuid strings, JSON text for JSON objects). Raises pydantic's
        ValidationError naming each bad field."""
        return cls.model_validate(data)

    @classmethod
    def avro_schema(cls) -> dict[str, Any]:
        """The parsed Avro schema of this record (cached; do not mutate)."""
        return load_avro_schema(cls.avro_name)


def load_avro_schema(avro_name: str) -> dict[str, Any]:
    """The parsed (``fastavro.parse_schema``) schema of the named type, read from
    ``schemas/avro/<avro_name>.avsc`` with the named types it uses resolved from sibling files.

    Cached: callers share one dict and must not mutate it. A short name gets the
    ``compute.events`` namespace. Raises KeyError for a name with no file.
    """
    if "." not in avro_name:
        avro_name = f"{AVRO_NAMESPACE}.{avro_name}"
    return _load_avro_schema(avro_name)


def _load_avro_schema(avro_name: str) -> dict[str, Any]:
    try:
        return avro_files.parsed_schema(avro_name)
    except FileNotFoundError:
        known = sorted(p.stem for p in AVRO_DIR.glob("*.avsc"))
        raise KeyError(f"no Avro schema {avro_name!r} in {AVRO_DIR}; known: {', '.join(known)}") from None
