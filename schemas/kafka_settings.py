"""Typed Kafka settings, read once from the environment and passed down.

Security (SASL, TLS) and any other librdkafka property pass straight through, so the same code
runs against a laptop broker and a secured cluster.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.partitioning import LIBRDKAFKA_PARTITIONER
from schemas.topics import Topics


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAFKA_", frozen=True, extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    # Any other librdkafka property, e.g. KAFKA_CLIENT_EXTRA='{"linger.ms": "10"}'.
    client_extra: dict[str, str] = Field(default_factory=dict)
    topic_prefix: str = "compute"
    # Six partitions: enough for six workers of one type to share the load on day one;
    # raise it (topics are created once) for larger groups.
    partitions: int = Field(default=6, ge=1)
    # The topics' replication: 1/1 on a single broker; on a cluster of three or more, 3 and 2
    # (what `computectl dev up --brokers 3` exports), so one broker may be down while producers
    # with acks=all still write. Unset min ISR: the broker's default (min.insync.replicas).
    replication_factor: int = Field(default=1, ge=1)
    min_insync_replicas: int | None = Field(default=None, ge=1)
    # Confluent-compatible schema registry. Unset: Avro single-object framing (no registry).
    schema_registry_url: str | None = Field(default=None, validation_alias="SCHEMA_REGISTRY_URL")

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def client_config(self) -> dict[str, Any]:
        """librdkafka (confluent-kafka) properties common to producers, consumers and admin."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        for key, value in (
            ("ssl.ca.location", self.ssl_ca_location),
            ("ssl.certificate.location", self.ssl_certificate_location),
            ("ssl.key.location", self.ssl_key_location),
        ):
            if value:
                conf[key] = value
        conf.update(self.client_extra)
        return conf

    def producer_config(self) -> dict[str, Any]:
        """:meth:`client_config` plus the partitioner every writer of the topics uses: murmur2,
        the Java client's default (``schemas/partitioning.py``). Every confluent-kafka Producer
        starts from this; consumers and admin clients take :meth:`client_config` (librdkafka
        warns about a producer property given to a consumer). ``KAFKA_CLIENT_EXTRA`` cannot
        change the partitioner: a writer on another one breaks the processors' co-partitioning."""
        return {**self.client_config(), "partitioner": LIBRDKAFKA_PARTITIONER}

    def aiokafka_config(self) -> dict[str, Any]:
        """The same settings in aiokafka's (and so Faust's) vocabulary."""
        conf: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl_mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl_plain_username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return conf
