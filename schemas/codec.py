"""Encode events to framed Avro bytes and decode any framed record back to its event model.

Writers frame with Avro single-object encoding by default, or with the Confluent schema-registry
framing when a :class:`~schemas.schema_registry.SchemaRegistry` is given. Readers accept both. A record
written with another version of a schema is resolved against the reader's current schema by
Avro's rules (see docs/SCHEMA_EVOLUTION.md); its writer schema is found by fingerprint (in this
process's catalogue or the schema-store topic) or by registry id.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar, cast

from fastavro import schemaless_reader

from schemas import avro_files
from schemas.avro_writer import compile_writer
from schemas.errors import DecodeError, UnknownSchemaError
from schemas.events import AvroRecord, all_event_models
from schemas.framing import Framing, confluent_prefix, read_header, single_object_prefix

E = TypeVar("E", bound=AvroRecord)


class SchemaRegistry(Protocol):
    """What the codec needs of a Confluent-compatible schema registry."""

    def register(self, subject: str, schema_text: str) -> int: ...

    def schema_by_id(self, schema_id: int) -> dict[str, Any]: ...


# Fetches a writer schema that this process does not know, by fingerprint (schema-store topic).
FingerprintLookup = Callable[[bytes], "dict[str, Any] | None"]


class _Writer:
    __slots__ = ("prefix", "parsed", "body")

    def __init__(self, prefix: bytes, parsed: dict[str, Any], body: Callable[..., bytes]) -> None:
        self.prefix = prefix
        self.parsed = parsed
        # body(event, prefix) -> prefix + Avro binary body: code generated from the schema
        # (schemas/avro_writer.py), byte-for-byte what fastavro writes from event.to_avro().
        self.body = body


class EventCodec:
    """Thread-compatible (no shared mutable state beyond caches that only grow)."""

    def __init__(
        self,
        registry: SchemaRegistry | None = None,
        lookup_fingerprint: FingerprintLookup | None = None,
        extra_writer_schemas: Iterable[dict[str, Any]] = (),
    ) -> None:
        self._registry = registry
        self._lookup_fingerprint = lookup_fingerprint
        self._models: dict[str, type[AvroRecord]] = {m.avro_name: m for m in all_event_models()}
        self._writers: dict[type[AvroRecord], _Writer] = {}
        # writer schemas by fingerprint / registry id -> parsed schema
        self._by_fingerprint: dict[bytes, dict[str, Any]] = {}
        self._by_id: dict[int, dict[str, Any]] = {}
        for name in self._models:
            parsed = avro_files.parsed_schema(name)
            self._by_fingerprint[avro_files.fingerprint(parsed)] = parsed
        for schema in extra_writer_schemas:
            self.add_writer_schema(schema)

    # -- writing ---------------------------------------------------------------------------

    def encode(self, event: AvroRecord) -> bytes:
        writer = self._writers.get(type(event)) or self._writer_for(type(event))
        return writer.body(event, writer.prefix)

    def _writer_for(self, model: type[AvroRecord]) -> _Writer:
        parsed = avro_files.parsed_schema(model.avro_name)
        if self._registry is not None:
            # RecordNameStrategy: one subject per record type, whatever topic carries it.
            text = avro_files.canonical_text(avro_files.schema_json(model.avro_name))
            schema_id = self._registry.register(model.avro_name, text)
            self._by_id[schema_id] = parsed
            prefix = confluent_prefix(schema_id)
        else:
            prefix = single_object_prefix(avro_files.fingerprint(parsed))
        body = compile_writer(model, avro_files.schema_json(model.avro_name))
        writer = self._writers[model] = _Writer(prefix, parsed, body)
        return writer

    @property
    def framing(self) -> Framing:
        return Framing.CONFLUENT if self._registry is not None else Framing.SINGLE_OBJECT

    # -- reading ---------------------------------------------------------------------------

    def add_writer_schema(self, schema: dict[str, Any]) -> bytes:
        """Make another version of a schema known (e.g. read from the schema-store topic)."""
        parsed = avro_files.parse(schema)
        fp = avro_files.fingerprint(parsed)
        self._by_fingerprint.setdefault(fp, parsed)
        return fp

    def decode_dict(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """Decode to ``(record name, plain dict)`` resolved against the current schema when this
        process knows the record, else as written. Raises DecodeError."""
        header = read_header(data)
        writer = self._writer_schema(header.framing, header.schema_key)
        name = writer["name"]
        reader = avro_files.parsed_schema(name) if name in self._models else None
        if reader is not None and reader is writer:
            reader = None  # same schema: skip resolution
        try:
            record = schemaless_reader(
                io.BytesIO(data[header.body_offset :]), writer, reader
            )
        except Exception as exc:  # fastavro raises several types for bad bodies
            raise DecodeError(f"body of a {name} record is not valid Avro: {exc}") from exc
        return name, cast(dict[str, Any], record)

    def decode(self, data: bytes, expect: type[E] | None = None) -> E | AvroRecord:
        name, record = self.decode_dict(data)
        model = self._models.get(name)
        if model is None:
            raise UnknownSchemaError(f"record type {name} has no model in this version")
        if expect is not None and model is not expect:
            raise DecodeError(f"expected a {expect.avro_name} record, got {name}")
        try:
            return model.from_avro(record)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise DecodeError(f"{name} record breaks the contract: {exc}") from exc

    def _writer_schema(self, framing: Framing, key: bytes | int) -> dict[str, Any]:
        if framing is Framing.SINGLE_OBJECT:
            assert isinstance(key, bytes)
            parsed = self._by_fingerprint.get(key)
            if parsed is None and self._lookup_fingerprint is not None:
                found = self._lookup_fingerprint(key)
                if found is not None:
                    self.add_writer_schema(found)
                    parsed = self._by_fingerprint.get(key)
            if parsed is None:
                raise UnknownSchemaError(
                    f"no schema with fingerprint {key.hex()} in this process or the schema store"
                )
            return parsed
        assert isinstance(key, int)
        parsed = self._by_id.get(key)
        if parsed is None:
            if self._registry is None:
                raise UnknownSchemaError(
                    f"record framed with registry schema id {key} but no SCHEMA_REGISTRY_URL is set"
                )
            parsed = self._by_id[key] = avro_files.parse(self._registry.schema_by_id(key))
        return parsed
