"""Micro-benchmark: microseconds per Avro decode, fastavro versus the generated reader, beside the
generated writer's encode of the same event.

For bench/bench_encode.py's events (a GenerationTaskSubmitted; a StatusChanged QUEUED, as every
submit writes; a COMPLETED with a result, as the fold, the projector, the API's notifier and the
CLI read most), in one run:

* ``fastavro``: ``schemaless_reader`` over a BytesIO of the body (what ``EventCodec.decode_dict``
  did before ``schemas/avro_reader.py``);
* ``compiled``: the reader ``compile_reader`` generated for the schema (what it does now);
* ``decode_dict``: the codec's whole read of a framed record (header, schema lookup, reader);
* ``decode``: ``decode_dict`` plus the model (``model.from_avro``: pydantic's validation);
* ``encode``: the generated writer on the same event (``compile_writer``), the issue's yardstick.

Each timed with timeit in CPU time (``time.process_time``), best of 5, over 1,000 records of the event that differ as a status stream
does: a new event id on each, one task id per four (PENDING, QUEUED, PROCESSING, COMPLETED), so
the reader's cache of recent UUIDs helps only as much as it would there. fastavro and compiled
must return equal records.

    .venv/bin/python bench/bench_decode.py [--number 20000] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
import timeit
import uuid
from collections.abc import Callable
from datetime import datetime
from itertools import cycle
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fastavro  # noqa: E402
from bench_encode import sample_events  # noqa: E402 - bench/ is not a package
from machine import cpu_between, describe, machine_state  # noqa: E402

from schemas import avro_files  # noqa: E402
from schemas.avro_reader import compile_reader  # noqa: E402
from schemas.avro_writer import compile_writer  # noqa: E402
from schemas.codec import EventCodec  # noqa: E402


def best_us(fn: Callable[[], Any], number: int) -> float:
    # This process's CPU time, not the wall clock: on a shared machine the wall clock also counts
    # the time other processes held the cores (the figures are still best of 5).
    return min(timeit.repeat(fn, number=number, repeat=5, timer=time.process_time)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="decodes per timing (default 20000)")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    args = parser.parse_args()
    codec = EventCodec()
    out: dict[str, Any] = {"bench": "decode", "number": args.number, "python": platform.python_version(),
                           "fastavro": fastavro.__version__, "cores": os.cpu_count(),
                           "at": datetime.now().astimezone().isoformat(timespec="seconds"),
                           "load_before": [round(x, 2) for x in os.getloadavg()], "before": machine_state(),
                           "events": {}}
    for label, event in sample_events().items():
        parsed = avro_files.parsed_schema(event.avro_name)
        framed = codec.encode(event)
        body = framed[10:]  # single-object framing: 2 marker bytes + 8 of fingerprint
        task_ids = [str(uuid.uuid4()) for _ in range(250)]
        stream = [codec.encode(event.model_copy(update={"envelope": event.envelope.model_copy(
            update={"event_id": str(uuid.uuid4()), "task_id": task_ids[i // 4]})})) for i in range(1000)]
        bodies = [f[10:] for f in stream]
        next_framed, next_body = cycle(stream).__next__, cycle(bodies).__next__
        compiled = compile_reader(parsed)
        writer = compile_writer(type(event), avro_files.schema_json(event.avro_name))
        assert compiled(body) == fastavro.schemaless_reader(io.BytesIO(body), parsed, None), label
        assert codec.decode(framed) == event, label
        out["events"][label] = {"bytes": len(body), **{name: round(best_us(fn, args.number), 2) for name, fn in {
            "fastavro": lambda: fastavro.schemaless_reader(io.BytesIO(next_body()), parsed, None),
            "compiled": lambda: compiled(next_body()),
            "decode_dict": lambda: codec.decode_dict(next_framed()),
            "decode": lambda: codec.decode(next_framed()),
            "encode": lambda: writer(event),
        }.items()}}
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    out["after"] = machine_state()
    out["machine_cpu"] = cpu_between(out["before"], out["after"])
    if args.json:
        print(json.dumps(out))
        return
    cols = ("fastavro", "compiled", "decode_dict", "decode", "encode")
    print(f"Python {out['python']}, fastavro {out['fastavro']}, {out['cores']} cores, {out['at']}, "
          f"{describe(out['before'], out['after'])}; CPU µs per call, best of 5 x {args.number}")
    print(f"{'event':<28}" + "".join(f"{c:>12}" for c in cols) + f"{'speedup':>9}{'bytes':>7}")
    for label, row in out["events"].items():
        print(f"{label:<28}" + "".join(f"{row[c]:>12.2f}" for c in cols)
              + f"{row['fastavro'] / row['compiled']:>8.1f}x{row['bytes']:>7}")


if __name__ == "__main__":
    main()
