"""Ids derived from an Idempotency-Key: the same (tenant, key) always names the same task or
generation within a deployment, and, once ``IDEMPOTENCY_SECRET`` is set, nobody without the
secret can compute another tenant's ids.

With a secret the id is HMAC-SHA256(secret, namespace + tenant + "\\x1f" + key), its first 16
bytes as a version-4 UUID (indistinguishable from a random id). Without one it is the historical
``uuid5(namespace, tenant + "\\x1f" + key)``, which anyone who knows a tenant and a key can
predict: ids are never access rights (every read is checked against the caller's tenant, and a
task reads only its own tenant's results), but a deployment should set the secret, the same on
every API and producer process. Setting or changing it changes the ids of keys used from then on:
a repeat of a key first sent under the old secret becomes a new task (docs/SECURITY.md).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Fixed namespace for idempotency-key task ids; changing it would break every stored key.
IDEMPOTENCY_NAMESPACE = uuid.UUID("5f1d3c8e-7a43-4b8e-9a51-6c0e2f4d9b17")


class IdempotencySettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", validate_by_name=True,
                                      validate_by_alias=True)

    secret: SecretStr | None = Field(default=None, validation_alias="IDEMPOTENCY_SECRET")

    def secret_bytes(self) -> bytes | None:
        return self.secret.get_secret_value().encode() if self.secret else None


def keyed_uuid(namespace: uuid.UUID, name: str, secret: bytes | None) -> uuid.UUID:
    """``name``'s id in ``namespace``: HMAC-derived with ``secret``, else uuid5 (see above)."""
    if not secret:
        return uuid.uuid5(namespace, name)
    digest = hmac.new(secret, namespace.bytes + name.encode("utf-8", "surrogatepass"),
                      hashlib.sha256).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


def task_id_for(idempotency_key: str, tenant_id: str | None = None,
                secret: bytes | None = None) -> str:
    """The task id an idempotency key stands for. Keys are scoped per tenant."""
    return str(keyed_uuid(IDEMPOTENCY_NAMESPACE, f"{tenant_id or ''}\x1f{idempotency_key}", secret))
