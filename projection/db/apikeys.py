"""API keys: created and revoked from the CLI, checked by the API.

A key reads ``csk_<key id>_<secret>``. Only the key id (public, it finds the row), a random
per-key salt and SHA-256(salt || secret) are stored; the secret is shown once, at creation.
An ``operator`` key may also read what spans every tenant (``/metrics``, fleet monitoring);
docs/SECURITY.md "Operators and what the API exposes".
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

import psycopg

PREFIX = "csk"
# Revoking a key notifies this channel (payload: the key id) in the same transaction: API
# processes that cache accepted keys drop it there and then (api/deps.py KeyCache).
REVOKED_CHANNEL = "api_key_revoked"
_KEY_ID_BYTES = 6  # 12 hex characters: ids never collide in practice and stay readable
_SECRET_BYTES = 32  # 256 bits of secret


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant_id: str
    name: str | None
    created_at: datetime
    revoked: bool
    operator: bool = False


@dataclass(frozen=True)
class Caller:
    """Who is calling the API: the key's id, its tenant, and whether it is an operator key."""

    key_id: str
    tenant_id: str
    operator: bool = False


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


def split_key(key: str) -> tuple[str, str] | None:
    """``(key id, secret)`` of a well-formed key, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def create_key(database_url: str, tenant_id: str, name: str | None = None, *,
               operator: bool = False) -> tuple[str, ApiKey]:
    """Store a new key for ``tenant_id`` (an operator key with ``operator``); return the key
    (shown once) and its record."""
    if not tenant_id.strip():
        raise ValueError("tenant must not be blank")
    key_id = secrets.token_hex(_KEY_ID_BYTES)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    salt = secrets.token_bytes(16)
    with psycopg.connect(database_url) as conn:
        created_at = conn.execute(
            "INSERT INTO api_keys (key_id, tenant_id, name, salt, key_hash, operator)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING created_at",
            (key_id, tenant_id, name, salt, _digest(salt, secret), operator),
        ).fetchone()[0]
    return f"{PREFIX}_{key_id}_{secret}", ApiKey(key_id, tenant_id, name, created_at, False, operator)


def list_keys(database_url: str, tenant_id: str | None = None) -> list[ApiKey]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT key_id, tenant_id, name, created_at, revoked, operator FROM api_keys"
            " WHERE %(t)s::text IS NULL OR tenant_id = %(t)s ORDER BY created_at, key_id",
            {"t": tenant_id},
        ).fetchall()
    return [ApiKey(*r) for r in rows]


def revoke_key(database_url: str, key_id: str) -> bool:
    """Revoke a key by id (or by the whole key); False if no such active key."""
    parts = split_key(key_id)
    key_id = parts[0] if parts else key_id
    with psycopg.connect(database_url) as conn:
        cur = conn.execute(
            "UPDATE api_keys SET revoked = true, revoked_at = now() WHERE key_id = %s AND NOT revoked",
            (key_id,),
        )
        if cur.rowcount != 1:
            return False
        conn.execute("SELECT pg_notify(%s, %s)", (REVOKED_CHANNEL, key_id))
        return True


async def verify_key(conn: psycopg.AsyncConnection, key: str) -> Caller | None:
    """The caller a presented key stands for; None if unknown, revoked or wrong."""
    parts = split_key(key)
    if parts is None:
        return None
    key_id, secret = parts
    cur = await conn.execute(
        "SELECT tenant_id, salt, key_hash, operator FROM api_keys WHERE key_id = %s AND NOT revoked",
        (key_id,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    tenant, salt, stored, operator = (
        (row["tenant_id"], row["salt"], row["key_hash"], row["operator"]) if isinstance(row, dict) else row)
    if not hmac.compare_digest(_digest(bytes(salt), secret), bytes(stored)):
        return None
    return Caller(key_id=key_id, tenant_id=tenant, operator=operator)
