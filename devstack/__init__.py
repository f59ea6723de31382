"""The local stack with no Docker: Kafka (KRaft, JVM), PostgreSQL, an S3 endpoint (moto).

Public names (imported lazily, so ``python -m devstack.kafka`` and friends run clean):

- :class:`LocalStack` (stack.py): the three together; ``env()`` gives the endpoints.
- :class:`KafkaBroker`, :func:`ensure_kafka_jars` (kafka.py)
- :class:`KafkaCluster` (kafka_cluster.py): ``dev up --brokers 3``, three KRaft nodes
- control.py: faults on a recorded stack (``dev restart`` / ``stop`` / ``start`` / ``freeze``)
- :class:`PostgresCluster` (postgres.py)
- :class:`S3Endpoint`, :func:`create_bucket` (s3.py)
- :data:`dev` (cli.py): the ``computectl dev`` click group.
- :class:`DevStackError` (procs.py)

``computectl up`` / ``ps`` / ``logs`` / ``down`` add the system's services to the stack:
system_cli.py (the commands), system.py (what ``up`` composes), services.py (the supervisor).

See docs/LOCAL_STACK.md.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LocalStack": "devstack.stack",
    "KafkaBroker": "devstack.kafka",
    "ensure_kafka_jars": "devstack.kafka",
    "KAFKA_VERSION": "devstack.kafka",
    "KafkaCluster": "devstack.kafka_cluster",
    "PostgresCluster": "devstack.postgres",
    "S3Endpoint": "devstack.s3",
    "create_bucket": "devstack.s3",
    "dev": "devstack.cli",
    "DevStackError": "devstack.procs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
