"""The API's settings: one frozen object, built by :func:`load_settings`, passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.kafka_settings import KafkaSettings


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COMPUTE_API_", frozen=True, extra="ignore",
                                      populate_by_name=True)

    database_url: str = Field(default="postgresql://127.0.0.1:5432/compute",
                              validation_alias="DATABASE_URL")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    # 1 MiB: the largest task (an LLM prompt with a system prompt) is a few KiB; images travel
    # by URL, never in the body.
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Connections per API process: each request holds one for a few milliseconds.
    db_pool_size: int = Field(default=10, ge=1)
    # How long POST /tasks waits for the broker's acknowledgement before answering 503.
    submit_timeout_s: float = Field(default=10.0, gt=0)
    # Origin fields stamped on tasks submitted through this API (the tenant comes from the key).
    origin_instance: str | None = None
    origin_zone: str | None = None
    # A comment line on idle SSE streams this often keeps proxies from closing them.
    sse_keepalive_s: float = Field(default=15.0, gt=0)
    # SSE streams re-read the events this often even without a notification (a lost NOTIFY or
    # a listener reconnecting costs at most this much delay).
    sse_poll_s: float = Field(default=1.0, gt=0)
    # An accepted API key is trusted this long without asking the database again. Revoking a
    # key is notified to every API process, which drops it at once; this bounds how long a key
    # could outlive a revocation whose notification was lost. 0: the database on every request.
    api_key_cache_s: float = Field(default=10.0, ge=0, le=300)
    # The longest a GET /tasks/{id}?wait=... may hold a request open.
    max_wait_s: float = Field(default=60.0, gt=0, le=300)
    # Timeout of the Kafka and PostgreSQL checks of /readyz.
    ready_timeout_s: float = Field(default=2.0, gt=0)
    # The worker groups are "<prefix>.<type slug>" (gpu_consumers' group_prefix).
    worker_group_prefix: str = "compute-workers"
    # Run the projector inside the API process (one command for small deployments and tests).
    embedded_projector: bool = False
    # The folder where the projector and the processors write their health reports
    # (state/consumer_watchdog.py; COMPUTE_HEALTH_DIR, shared by every process of a stack):
    # /readyz is not ready while one of them is not making progress. None: only the consumers
    # in this process (the embedded projector) are checked.
    health_dir: Path | None = Field(default=None, validation_alias=AliasChoices(
        "COMPUTE_HEALTH_DIR", "health_dir"))
    # A report older than this means its process hung or died: not ready. Reports are written
    # every few seconds (CONSUMER_WATCHDOG_CHECK_INTERVAL_S, 5 s), slower while the broker is away.
    consumer_stale_after_s: float = Field(default=45.0, gt=0)
    # ...and one older than this is left out: a consumer removed for good, not one to wait for.
    consumer_forget_after_s: float = Field(default=600.0, gt=0)


def load_settings(**overrides: Any) -> ApiSettings:
    """Read the environment once (DATABASE_URL, KAFKA_*, COMPUTE_API_*); ``overrides`` win."""
    return ApiSettings(**overrides)
