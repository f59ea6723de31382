"""``computectl processors``: run the Faust app until SIGTERM (or Ctrl-C): the lifecycle fold,
leases, and the generations orchestrator (the AGENTIC loop).

Settings are read once from the environment (``KAFKA_*``, ``SCHEMA_REGISTRY_URL``,
``PROCESSORS_*``, ``COMPUTE_EVALUATOR_*``; the orchestrator fetches images with the workers'
``INPUT_*``, ``RESULTS_URL`` and ``S3_ENDPOINT_URL``) and passed down. The topics are created first if missing (idempotent), so the
app never waits on a topic nobody created. On SIGTERM the worker stops its agents, flushes what
they produced, commits, and exits 0; a crash or a SIGKILL loses nothing either: the next start
recovers the tables from their changelogs and folds again from the last committed offsets.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

import click


def _stop_while_starting(signum: int, frame: FrameType | None) -> None:
    """SIGTERM before Faust has installed its own handler: nothing was consumed or produced
    yet that needs flushing, so stop here, cleanly, instead of dying by the signal."""
    sys.exit(0)


def build_app():  # settings read once, here
    from processors.app import create_app
    from processors.evaluators.base import EvaluatorSettings
    from processors.settings import ProcessorSettings
    from schemas.codec import EventCodec
    from schemas.kafka_settings import KafkaSettings
    from schemas.schema_store import SchemaStoreReader

    kafka = KafkaSettings()
    registry = None
    if kafka.schema_registry_url:
        from schemas.schema_registry import HttpSchemaRegistry

        registry = HttpSchemaRegistry(kafka.schema_registry_url)
    codec = EventCodec(registry=registry, lookup_fingerprint=SchemaStoreReader(kafka))
    settings = ProcessorSettings()
    return kafka, settings, create_app(kafka, settings, codec=codec,
                                       evaluator_settings=EvaluatorSettings.from_env())


@click.command("processors")
@click.option("--create-topics/--no-create-topics", default=True, show_default=True,
              help="Create missing topics before starting (computectl topics create).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def processors(create_topics: bool, log_level: str) -> None:
    """Run the stream processors: the lifecycle fold into the state topic, leases, and the
    generations orchestrator (AGENTIC evaluation and retries)."""
    signal.signal(signal.SIGTERM, _stop_while_starting)  # the worker replaces it once running
    import faust

    from schemas.framing import Framing
    from schemas.schema_store import publish_event_schemas
    from schemas.topic_admin import ensure_topics

    kafka, settings, app = build_app()
    os.nice(settings.cpu_nice)  # yield the CPU to the task path (0: keep the priority)
    if create_topics:
        ensure_topics(kafka)
    # What this process writes (statuses, retried task records, evaluations), for readers
    # without a registry (docs/SCHEMA_EVOLUTION.md).
    publish_event_schemas(kafka, Framing.CONFLUENT if kafka.schema_registry_url else Framing.SINGLE_OBJECT)
    worker = faust.Worker(app, loglevel=log_level.upper(), quiet=True, redirect_stdouts=False)
    # Faust's terminal spinner sets the root logger to DEBUG at WARNING and above, so every
    # debug call in aiokafka and Faust builds a log record (4-5 per event). No spinner here.
    worker.spinner = None
    worker.execute_from_commandline()  # returns by SystemExit: 0 after a clean stop


if __name__ == "__main__":  # python -m processors.cli
    processors()
