"""Wire framing of Avro bodies: Avro single-object encoding or Confluent schema-registry framing.

Single-object (the default, no registry needed)::

    C3 01 | 8-byte little-endian CRC-64-AVRO fingerprint of the schema's canonical form | body

Confluent (used when a schema registry URL is configured)::

    00 | 4-byte big-endian schema id | body

A reader tells them apart by the first bytes, so one consumer reads topics written either way.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum

from schemas.errors import DecodeError

SINGLE_OBJECT_MARKER = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_FINGERPRINT_LEN = 8
_SCHEMA_ID = struct.Struct(">I")


class Framing(str, Enum):
    SINGLE_OBJECT = "single-object"
    CONFLUENT = "confluent"


@dataclass(frozen=True)
class FrameHeader:
    framing: Framing
    schema_key: bytes | int  # the 8-byte fingerprint, or the registry's schema id
    body_offset: int


def single_object_prefix(fingerprint: bytes) -> bytes:
    if len(fingerprint) != _FINGERPRINT_LEN:
        raise ValueError("a CRC-64-AVRO fingerprint is 8 bytes")
    return SINGLE_OBJECT_MARKER + fingerprint


def confluent_prefix(schema_id: int) -> bytes:
    return CONFLUENT_MAGIC + _SCHEMA_ID.pack(schema_id)


def read_header(data: bytes) -> FrameHeader:
    """Detect the framing from the first bytes; raise DecodeError for anything else."""
    if data is None:
        raise DecodeError("empty record value (a tombstone?): not an event")
    if data[:2] == SINGLE_OBJECT_MARKER:
        end = 2 + _FINGERPRINT_LEN
        if len(data) < end:
            raise DecodeError(f"truncated single-object header ({len(data)} bytes)")
        return FrameHeader(Framing.SINGLE_OBJECT, bytes(data[2:end]), end)
    if data[:1] == CONFLUENT_MAGIC:
        if len(data) < 5:
            raise DecodeError(f"truncated schema-registry header ({len(data)} bytes)")
        return FrameHeader(Framing.CONFLUENT, _SCHEMA_ID.unpack_from(data, 1)[0], 5)
    head = bytes(data[:4]).hex() or "(empty)"
    raise DecodeError(
        f"unknown framing: first bytes {head}; expected C301 (Avro single-object) "
        "or 00 (schema-registry framing)"
    )
