"""Micro-benchmark: microseconds per Avro body encode, fastavro versus the generated writer.

For a GenerationTaskSubmitted (the seed's GENERATION example) and a StatusChanged (QUEUED, as
the producer writes on every submit; and COMPLETED with a result), in one run:

* fastavro: ``event.to_avro(union_hints=True)`` + ``fastavro.schemaless_writer`` into a BytesIO
  (what ``EventCodec.encode`` did before ``schemas/avro_writer.py``);
* compiled: the writer ``compile_writer`` generated from the schema (what it does now).

Each is timed with timeit, best of 5; the two must give the same bytes.

    .venv/bin/python bench/bench_encode.py [--number 20000]
"""

from __future__ import annotations

import argparse
import io
import platform
import timeit
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import fastavro

from producers.examples import SEED_EXAMPLES
from schemas import avro_files
from schemas.avro_writer import compile_writer
from schemas.enums import TaskStatus, TaskType
from schemas.events import Envelope, GenerationTaskSubmitted, StatusChanged, TaskResult
from schemas.records import AvroRecord
from schemas.task_params import GenerationParams


def sample_events() -> dict[str, AvroRecord]:
    env = Envelope(
        event_id=str(uuid.uuid4()), task_id=str(uuid.uuid4()), task_type=TaskType.GENERATION,
        occurred_at=datetime.now(UTC), source="producer",
    )
    result = TaskResult(
        result_image_url="s3://outputs/look-001.png", output_urls=["s3://outputs/look-001.png"], seed=42,
        metadata={"model": "flux-dev", "provider": "diffusers", "timing_ms": 5321, "width": 1024, "height": 1536},
    )
    return {
        "GenerationTaskSubmitted": GenerationTaskSubmitted(
            envelope=env, params=GenerationParams(**SEED_EXAMPLES[TaskType.GENERATION])
        ),
        "StatusChanged (QUEUED)": StatusChanged(envelope=env, status=TaskStatus.QUEUED),
        "StatusChanged (COMPLETED)": StatusChanged(envelope=env, status=TaskStatus.COMPLETED, result=result),
    }


def best_us(fn: Callable[[], bytes], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="encodes per timing (default 20000)")
    args = parser.parse_args()
    print(f"Python {platform.python_version()} on {platform.machine()}, fastavro {fastavro.__version__}; "
          f"µs per encode, best of 5 x {args.number}")
    print(f"{'event':<28}{'fastavro':>10}{'compiled':>10}{'speedup':>9}{'bytes':>7}")
    for label, event in sample_events().items():
        parsed = avro_files.parsed_schema(event.avro_name)
        compiled = compile_writer(type(event), avro_files.schema_json(event.avro_name))

        def with_fastavro(event: AvroRecord = event, parsed: dict = parsed) -> bytes:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed, event.to_avro(union_hints=True))
            return buf.getvalue()

        def with_compiled(event: AvroRecord = event) -> bytes:
            return compiled(event)

        body = with_compiled()
        assert body == with_fastavro(), f"{label}: the compiled writer disagrees with fastavro"
        slow, fast = best_us(with_fastavro, args.number), best_us(with_compiled, args.number)
        print(f"{label:<28}{slow:>10.2f}{fast:>10.2f}{slow / fast:>8.1f}x{len(body):>7}")


if __name__ == "__main__":
    main()
