"""Benchmark: a backlog of queued no-op tasks drained by workers, with every process's memory.

The deployment is bench_api_latency.py's (imported): ``computectl processors``, ``projector`` and
``api`` on the local stack (Kafka + PostgreSQL, started here unless ``KAFKA_BOOTSTRAP_SERVERS``
and ``DATABASE_URL`` are set; then the broker and PostgreSQL are not sampled), but no worker at
first. ``--tasks`` IMAGE_ADJUSTER tasks (32x32 ``file://`` PNG, no prompt) are submitted as fast
as one :class:`TaskProducer` goes, then ``--workers`` ``computectl worker --types image_adjuster``
processes are started (bench_load's scale_workers) and drain them.

Every ``--interval`` second from the first submit to the end, a sample: each service's CPU
seconds, RSS and PSS (its process tree summed, bench/proc_sample.py's sampler, as bench_load.py
reports them: api, projector, processors, every worker, kafka, postgres), the worker group's lag
on the task topic, and the read model's COMPLETED and FAILED counts for the run's tenant.
Drained: the read model shows every task COMPLETED (or FAILED).

Reported: submit rate, drain rate (tasks / seconds from the workers' start to drained), time to
drain, the workers' own rate (from their first committed task to their last, by the group's lag:
a worker spends tens of seconds starting its handler process, and the read model trails the
workers on a backlog), and for each service its RSS over the drain (the workers' first commit to
drained in the read model: start, middle, end, max) and the slope of the least-squares line
through its samples of the second half of it, in MiB per minute and KiB per 1,000 tasks; the
same slope of PSS (shared pages split between the processes sharing them); each service's CPU
in % of one core over the drain; the machine's busy % and steal % over the run
(bench/machine.py). **Memory is flat** when every service's second-half *PSS* slope is below
``--flat-mib-per-min`` (2 MiB/min by default: a leak of 1 KiB per task at the ~50 tasks/s of two
workers on this machine would be ~3 MiB/min); ``memory_flat_measure`` in the JSON names the
measure. PSS, not RSS, since 2026-12-07: a tree's RSS counts PostgreSQL's shared buffers once per
backend that touched them, and grows while backends touch more of them (docs/PERFORMANCE.md).
The first half is left out because a process fills its caches and pools there and the JVM
touches its fixed heap; what must not happen is growth that goes on.

    .venv/bin/python bench/bench_backlog.py [--tasks 100000] [--workers 2] [--interval 1]
        [--curve FILE.csv] [--flat-mib-per-min 2] [--deadline 3600] [--no-processors] [--json]

Progress and a table go to stderr; ``--json`` prints one JSON line (the curve included) to stdout.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402
from bench_api_latency import Services, deploy, say  # noqa: E402 - bench/ is not a package
from bench_load import scale_workers, start_stack, worker_names  # noqa: E402
from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from machine import cpu_between, describe, machine_state  # noqa: E402
from proc_sample import ProcessSet, cpu_percent, least_squares_slope  # noqa: E402

# The field of memory_report's entries that the memory verdict judges: the PSS slope, since a
# tree's RSS counts a page shared by its processes once per process (docs/PERFORMANCE.md).
FLAT_MEASURE = "pss_slope_mib_per_min"

from devstack.procs import wait_until  # noqa: E402
from producers.submit import Origin, TaskProducer  # noqa: E402
from schemas.enums import TaskType  # noqa: E402
from schemas.kafka_settings import KafkaSettings  # noqa: E402


class Sampler:
    """A thread taking one sample every ``interval`` seconds until stopped."""

    def __init__(self, services: Services, stack_pids: dict[str, int | None], kafka: KafkaSettings,
                 db_url: str, tenant: str, interval: float) -> None:
        self.services, self.stack_pids, self.interval, self.tenant = services, stack_pids, interval, tenant
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.phase = "submit"
        self._stop = threading.Event()
        self._db = psycopg.connect(db_url, autocommit=True)
        topic = kafka.topics.task(TaskType.IMAGE_ADJUSTER)
        group = f"{services.env['WORKER_GROUP_PREFIX']}.{TaskType.IMAGE_ADJUSTER.slug}"
        # Same group id, never subscribed: it only reads the group's committed offsets.
        self._lag_reader = Consumer({**kafka.client_config(), "group.id": group, "enable.auto.commit": False})
        parts = self._lag_reader.list_topics(topic, timeout=10).topics[topic].partitions
        self._partitions = [TopicPartition(topic, p) for p in parts]
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _lag(self) -> int:
        committed = self._lag_reader.committed(self._partitions, timeout=10)
        lag = 0
        for tp in committed:
            low, high = self._lag_reader.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag

    def counts(self) -> tuple[int, int, int]:
        """(rows, COMPLETED, FAILED) of this run's tenant in the read model."""
        row = self._db.execute(
            "SELECT count(*), count(*) FILTER (WHERE status = 'COMPLETED'), "
            "count(*) FILTER (WHERE status = 'FAILED') FROM tasks WHERE origin_tenant_id = %s",
            (self.tenant,)).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    def sample(self) -> dict[str, Any]:
        roots = {n: p.pid for n, p in self.services.procs.items()}
        procs = ProcessSet({**roots, **self.stack_pids}).sample()
        rows, completed, failed = self.counts()
        s = {"t": round(time.monotonic() - self.t0, 2), "phase": self.phase, "lag": self._lag(),
             "rows": rows, "completed": completed, "failed": failed, "rss_mib": procs.rss_mib,
             "pss_mib": procs.pss_mib, "cpu_s": {n: round(v, 2) for n, v in procs.cpu_s.items()},
             "load1": round(os.getloadavg()[0], 2)}
        self.samples.append(s)
        return s

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.sample()
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._lag_reader.close()
        self._db.close()


def memory_report(samples: list[dict[str, Any]], start: float, end: float, rate: float,
                  flat_mib_per_min: float) -> dict[str, Any]:
    """Per service: RSS at the start, middle and end of [start, end], its second half's RSS and
    PSS slopes, and ``flat`` by the PSS slope."""
    drain = [s for s in samples if start <= s["t"] <= end]
    mid = (start + end) / 2
    second = [s for s in drain if s["t"] >= mid]
    names = sorted({n for s in drain for n in s["rss_mib"]})
    out: dict[str, Any] = {}
    for name in names:
        pts = [(s["t"], s["rss_mib"][name]) for s in second if name in s["rss_mib"]]
        slope = least_squares_slope([p[0] for p in pts], [p[1] for p in pts]) * 60  # MiB/min
        pss = [(s["t"], s["pss_mib"][name]) for s in second if name in s["pss_mib"]]
        pss_slope = least_squares_slope([p[0] for p in pss], [p[1] for p in pss]) * 60
        at = [s["rss_mib"][name] for s in drain if name in s["rss_mib"]]
        entry = {"start_mib": at[0] if at else None,
                 "mid_mib": next((s["rss_mib"].get(name) for s in drain if s["t"] >= mid), None),
                 "end_mib": at[-1] if at else None, "max_mib": max(at, default=None),
                 "slope_mib_per_min": round(slope, 2), "pss_slope_mib_per_min": round(pss_slope, 2),
                 "pss_end_mib": pss[-1][1] if pss else None,
                 "kib_per_1000_tasks": round(slope / 60 / rate * 1024 * 1000, 1) if rate else None,
                 "samples": len(pts)}
        out[name] = {**entry, "flat": abs(entry[FLAT_MEASURE]) < flat_mib_per_min}
    return out


def write_curve(path: Path, samples: list[dict[str, Any]]) -> None:
    names = sorted({n for s in samples for n in s["rss_mib"]})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "phase", "lag", "rows", "completed", "failed", "load1",
                    *(f"{n}_rss_mib" for n in names), *(f"{n}_pss_mib" for n in names), *(f"{n}_cpu_s" for n in names)])
        for s in samples:
            w.writerow([s["t"], s["phase"], s["lag"], s["rows"], s["completed"], s["failed"], s["load1"],
                        *(s["rss_mib"].get(n, "") for n in names), *(s["pss_mib"].get(n, "") for n in names),
                        *(s["cpu_s"].get(n, "") for n in names)])


def table(report: dict[str, Any]) -> str:
    lines = [f"{report['tasks']} tasks: submitted at {report['submit_per_s']}/s; {report['workers']} workers "
             f"drained them in {report['drain_s']} s = {report['drain_per_s']} tasks/s "
             f"into the read model; the workers committed their first task after {report['first_committed_s']} s, "
             f"their last after {report['workers_committed_s']} s ({report['workers_steady_per_s']} tasks/s "
             f"between); failed {report['failed']}",
             f"{'service':14}{'start':>9}{'mid':>9}{'end':>9}{'max':>9}{'MiB/min':>9}{'KiB/1k':>9}{'PSS/min':>9}"
             f"{'cpu %':>8}  flat"]
    for name, m in report["memory"].items():
        lines.append(f"{name:14}{m['start_mib']!s:>9}{m['mid_mib']!s:>9}{m['end_mib']!s:>9}{m['max_mib']!s:>9}"
                     f"{m['slope_mib_per_min']:>9}{m['kib_per_1000_tasks']!s:>9}{m['pss_slope_mib_per_min']:>9}"
                     f"{report['cpu_pct'].get(name, '')!s:>8}  {m['flat']}")
    lines.append(f"(start..max: RSS MiB; cpu: % of one core over the drain) memory flat (every service's "
                 f"{report['memory_flat_measure']} < {report['flat_mib_per_min']}): "
                 f"{report['memory_flat']}; {describe(report['before'], report['after'])}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks queued before the workers start")
    parser.add_argument("--workers", type=int, default=2, help="worker processes that drain them")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between two samples")
    parser.add_argument("--curve", type=Path, help="also write the samples to this CSV file")
    parser.add_argument("--flat-mib-per-min", type=float, default=2.0,
                        help="the largest second-half PSS slope (MiB/min) that counts as flat")
    parser.add_argument("--deadline", type=float, default=3600.0, help="give up after this many seconds of drain")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for every service")
    parser.add_argument("--no-processors", action="store_true", help="do not run the Faust processors")
    parser.add_argument("--json", action="store_true", help="one JSON line with every figure on stdout")
    args = parser.parse_args()
    if args.tasks < 1 or args.workers < 1 or args.interval <= 0:
        parser.error("--tasks, --workers and --interval must be positive")
    report: dict[str, Any] = {
        "bench": "backlog", "tasks": args.tasks, "workers": args.workers, "interval": args.interval,
        "flat_mib_per_min": args.flat_mib_per_min, "overrides": args.overrides,
        "processors": not args.no_processors,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "before": machine_state()}
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="bench-backlog-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        stack_pids = start_stack(stack, workdir)
        kafka, services, _, _, image = deploy(stack, workdir, argparse.Namespace(
            overrides=args.overrides, no_processors=args.no_processors, start_worker=False))
        tenant = f"bench-{kafka.topic_prefix}"
        sampler = Sampler(services, stack_pids, kafka, os.environ["DATABASE_URL"], tenant, args.interval)
        if args.curve is not None:  # also when the run fails or is interrupted: the curve so far
            # Registered before sampler.stop, so it runs after it (last in, first out): the file
            # then holds every sample, as the JSON does, and none is appended while it is written.
            stack.callback(write_curve, args.curve, sampler.samples)
        stack.callback(sampler.stop)
        params = {"base_image_url": image.as_uri(), "brightness": 0.1, "contrast": 0.2, "warmth": 0.3}
        sampler.start()
        say(f"submitting {args.tasks} tasks...")
        t_submit = time.monotonic()
        with TaskProducer(kafka, source="bench-backlog", origin=Origin(tenant_id=tenant)) as producer:
            for _ in range(args.tasks):
                producer.submit(TaskType.IMAGE_ADJUSTER, params)
            producer.flush(120)
        submit_s = time.monotonic() - t_submit
        say(f"submitted in {submit_s:.1f} s; starting {args.workers} workers...")
        sampler.phase = "drain"
        t_start = time.monotonic() - sampler.t0
        scale_workers(services, kafka, args.workers)
        # Times (sampler clock) of the first sample where the workers committed a task (first_done),
        # with every task ended in the read model (t_end), and with the workers' committed offsets
        # at the end (workers_done: the projector may trail them by far, on a backlog it does).
        first_done: float | None = None
        t_end: float | None = None
        workers_done: float | None = None
        deadline = time.monotonic() + args.deadline
        while True:  # the sampler's own samples say when it is drained: no second query
            time.sleep(args.interval)
            services.check()
            last = sampler.samples[-1]
            if last["phase"] != "drain":
                continue
            if first_done is None and last["lag"] < args.tasks:
                first_done = last["t"]
            if workers_done is None and first_done is not None and last["lag"] == 0:
                workers_done = last["t"]
            if t_end is None and last["completed"] + last["failed"] >= args.tasks:
                t_end = last["t"]
            if t_end is not None and workers_done is not None:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not drained in {args.deadline} s: {last}")
            if len(sampler.samples) % 30 == 0:
                say(f"  t={last['t']:.0f} s lag {last['lag']} completed {last['completed']} rss {last['rss_mib']}")
        sampler.phase = "drained"  # one sample more after the end, for the curve
        wait_until(lambda: sampler.samples[-1]["phase"] == "drained", 10 * args.interval + 10)
        names = worker_names(services)
    assert first_done is not None and t_end is not None and workers_done is not None
    drain_s = t_end - t_start
    rate = args.tasks / drain_s if drain_s > 0 else 0.0
    samples = sampler.samples
    done_at_first = next(args.tasks - s["lag"] for s in samples if s["t"] == first_done)
    steady_s = workers_done - first_done
    steady = (args.tasks - done_at_first) / steady_s if steady_s > 0 else None
    report.update(
        submit_s=round(submit_s, 1), submit_per_s=round(args.tasks / submit_s, 1), worker_names=names,
        drain_s=round(drain_s, 1), drain_per_s=round(rate, 1),
        first_committed_s=round(first_done - t_start, 1),
        workers_steady_per_s=round(steady, 1) if steady is not None else None,
        workers_committed_s=round(workers_done - t_start, 1),
        failed=samples[-1]["failed"], after=machine_state(),
        memory=memory_report(samples, first_done, t_end, args.tasks / max(t_end - first_done, 1e-9),
                             args.flat_mib_per_min))
    report["memory_flat"] = all(m["flat"] for m in report["memory"].values())
    report["memory_flat_measure"] = FLAT_MEASURE
    drain = [s for s in samples if first_done <= s["t"] <= t_end]
    report["cpu_pct"] = cpu_percent(drain[0]["cpu_s"], drain[-1]["cpu_s"], drain[-1]["t"] - drain[0]["t"])
    report["machine_cpu"] = cpu_between(report["before"], report["after"])
    report["curve"] = samples
    say(table(report))
    if args.json:
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
