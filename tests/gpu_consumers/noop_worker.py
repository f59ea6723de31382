"""A worker process with a handler that finishes at once, for the group-healing tests: killed
with SIGKILL (or by a WORKER_FAULT_POINT) where a real worker process would be.

    python -m tests.gpu_consumers.noop_worker BOOTSTRAP PREFIX WORKER_ID RESULTS_DIR

The worker settings are the tests' (``runtime_helpers.worker_settings``) plus WORKER_* from the
environment; it serves until SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import sys

from gpu_consumers.runtime import Worker
from gpu_consumers.storage import FileStore
from schemas.kafka_settings import KafkaSettings
from tests.gpu_consumers.runtime_helpers import TYPE, Scripted, worker_settings


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    bootstrap, prefix, worker_id, results = argv
    kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=2)
    handler = Scripted()
    worker = Worker(kafka, worker_settings(kafka), {TYPE: {"test": lambda: handler}},
                    FileStore(results), None, None, worker_id=worker_id)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    stats = worker.run()
    return 0 if stats is not None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
