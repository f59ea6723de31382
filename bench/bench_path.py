"""Where a lone task's time and the machine's CPU go on the Kafka direct path.

One task at a time, back to back, the same no-op-sized task as bench_peer.py (an IMAGE_ADJUSTER
on a 32x32 PNG): ``TaskProducer.submit`` (default settings) -> a real worker -> COMPLETED read
from the status topic. Each task's round trip is cut at its status records' timestamps (the
broker keeps the producer's create time, taken when the worker called ``produce``):

* ``submit``: the ``submit`` call itself;
* ``to_processing``: submit start -> the worker produced PROCESSING (the task record to the
  broker, the worker's fetch, decode, the run's start);
* ``handler``: PROCESSING -> the worker produced COMPLETED (the handler, in the supervised handler
  process by default, and storing its output; millisecond timestamps);
* ``completed_rx``: COMPLETED produced -> this process holds it (the worker's flush, the
  broker, this consumer's fetch);
* ``total``: the round trip, as bench_peer.py's ``kafka`` path measures it.

And the CPU of every service per task over the measured tasks (ms of CPU per task: the broker,
PostgreSQL, processors, projector, API, worker with its handler process, and this process as the
client), which says what competes with a task for two cores when tasks come one after another.

    .venv/bin/python bench/bench_path.py [--count 2000] [--warmup 200] [--no-processors]
        [--set NAME=VALUE ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_api_latency import deploy, say  # noqa: E402 - bench/ is not a package
from bench_load import start_stack  # noqa: E402
from bench_peer import Direct, stats  # noqa: E402
from machine import cpu_between, describe, machine_state  # noqa: E402
from proc_sample import ProcessSet  # noqa: E402

STAGES = ("submit", "to_processing", "handler", "completed_rx", "total")


class DirectPath(Direct):
    """bench_peer.py's direct path, with its status records' timestamps kept."""

    def stages(self, image_url: str) -> dict[str, float]:
        """One task's stages in ms (wall clock: the records' timestamps are wall clock too)."""
        t0 = time.time()
        task_id = self.submit(image_url)
        submitted = time.time()
        seen = {status: (msg.timestamp()[1] / 1000, time.time())
                for status, msg in self.statuses(task_id, t0, time.time)}
        processing, (completed, received) = seen["PROCESSING"][0], seen["COMPLETED"]
        return {"submit": (submitted - t0) * 1e3,
                "to_processing": (processing - t0) * 1e3,
                "handler": (completed - processing) * 1e3,
                "completed_rx": (received - completed) * 1e3,
                "total": (received - t0) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="measured tasks")
    parser.add_argument("--warmup", type=int, default=200, help="tasks first, not measured")
    parser.add_argument("--no-processors", action="store_true", help="do not run the Faust processors")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for every one of our services")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = parser.parse_args()
    before = machine_state()
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="bench-path-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        stack_pids = start_stack(stack, workdir)
        kafka, services, _, _, image = deploy(stack, workdir, argparse.Namespace(
            overrides=args.overrides, no_processors=args.no_processors))
        path = DirectPath(kafka)
        stack.callback(path.close)
        image_url = image.as_uri()
        say(f"warm-up: {args.warmup} tasks...")
        for _ in range(max(1, args.warmup)):
            path.stages(image_url)
        services.check()
        procs = ProcessSet({**{n: p.pid for n, p in services.procs.items()}, **stack_pids},
                           alone={"client": os.getpid()})
        say(f"measuring {args.count} tasks...")
        cpu_before, t0 = procs.sample().cpu_s, time.monotonic()
        rows = [path.stages(image_url) for _ in range(args.count)]
        cpu_after, elapsed = procs.sample().cpu_s, time.monotonic() - t0
        services.check()
    cpu_ms = {name: round((cpu_after[name] - cpu_before.get(name, 0.0)) * 1e3 / args.count, 2)
              for name in cpu_after}
    out: dict[str, Any] = {
        "bench": "path", "count": args.count, "warmup": args.warmup,
        "processors": not args.no_processors, "overrides": args.overrides,
        "machine": f"{os.cpu_count()} cores", "before": before, "after": machine_state(),
        "tasks_per_s": round(args.count / elapsed, 1),
        "stages_ms": {stage: stats([r[stage] for r in rows]) for stage in STAGES},
        "cpu_ms_per_task": dict(sorted(cpu_ms.items(), key=lambda kv: -kv[1])),
        "cpu_ms_per_task_total": round(sum(cpu_ms.values()), 2)}
    out["machine_cpu"] = cpu_between(out["before"], out["after"])
    if args.json:
        print(json.dumps(out), flush=True)
        return
    cols = ("p50", "p90", "p99", "max")
    print(f"{'stage':<15}" + "".join(f"{c:>9}" for c in cols))
    for stage, s in out["stages_ms"].items():
        print(f"{stage:<15}" + "".join(f"{s[c]:9.2f}" for c in cols))
    print(f"\nCPU ms per task ({out['tasks_per_s']} tasks/s, one at a time):")
    for name, ms in out["cpu_ms_per_task"].items():
        print(f"  {name:<12}{ms:7.2f}")
    print(f"  {'all':<12}{out['cpu_ms_per_task_total']:7.2f}   "
          f"({describe(out['before'], out['after'])})")


if __name__ == "__main__":
    main()
