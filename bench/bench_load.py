"""Benchmark: many REST clients at once, each submitting a no-op-sized task and waiting for it.

The deployment is bench_api_latency.py's (imported, not copied): ``computectl processors``,
``projector``, ``api`` and ``worker --types image_adjuster`` as compose runs them, on the local
stack (Kafka + PostgreSQL, started here unless ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL``
are set; then the broker's and PostgreSQL's CPU is not measured). ``--clients`` threads, each with
its own kept-alive connection (bench_api_latency's LeanClient), loop: ``POST /api/v1/tasks``
(IMAGE_ADJUSTER on a 32x32 ``file://`` PNG, no prompt), then one ``GET /api/v1/tasks/{id}?wait=30``
until it answers COMPLETED (bench_api_latency's run_task, ``--mode wait``).

For each count in ``--workers`` (the same deployment; workers are started or stopped to reach the
count, and the run waits until the workers' consumer group has that many members), the clients
run unmeasured until as many tasks as clients are done and ``--warmup`` seconds more, then
``--duration`` seconds measured. Reported per count:
tasks/s (tasks whose COMPLETED answer arrived in the window), latency p50/p99 (POST sent -> the
GET showing COMPLETED), failed tasks, the API process's CPU seconds per task, and every service's
CPU in % of one core over the window (api, projector, processors, each worker, kafka, postgres,
and the clients: this process's own threads, on the same two cores) with which one saturates,
every service's RSS and PSS at the window's end (bench/proc_sample.py's sampler, as
bench_backlog.py reports them), and the machine's busy % and steal % over the window
(bench/machine.py).

    .venv/bin/python bench/bench_load.py [--clients 64] [--duration 30] [--warmup 5]
        [--workers 1 2 4] [--set NAME=VALUE ...] [--no-processors] [--json]

Progress and a table go to stderr; ``--json`` prints one JSON line with every figure to stdout.
"""
from __future__ import annotations

import argparse
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

from bench_api_latency import (  # noqa: E402 - bench/ is not a package
    LeanClient,
    Services,
    deploy,
    run_task,
    say,
    summary,
)
from confluent_kafka.admin import AdminClient  # noqa: E402
from machine import cpu_between, describe, machine_state  # noqa: E402
from proc_sample import ProcessSet, cpu_percent, saturated  # noqa: E402

from devstack.procs import stop_pid, wait_until  # noqa: E402
from schemas.enums import TaskType  # noqa: E402
from schemas.kafka_settings import KafkaSettings  # noqa: E402

WORKER_ARGS = ("worker", "--types", "image_adjuster", "--log-level", "WARNING")


def start_stack(stack: ExitStack, workdir: Path) -> dict[str, int | None]:
    """The local stack unless the environment names one; its broker's and PostgreSQL's pids
    (None for a stack not started here). deploy() then finds the stack in the environment."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("DATABASE_URL"):
        return {"kafka": None, "postgres": None}
    from devstack.stack import LocalStack

    say("starting the local stack (Kafka, PostgreSQL)...")
    local = LocalStack(s3=False, results_dir=workdir / "results")
    stack.callback(local.stop)
    local.start()
    assert local.kafka is not None and local.postgres is not None
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = local.kafka.bootstrap_servers
    os.environ["DATABASE_URL"] = local.postgres.url
    return {"kafka": local.kafka.pid, "postgres": local.postgres.pid}


def worker_names(services: Services) -> list[str]:
    return sorted(n for n in services.procs if n.startswith("worker"))


def scale_workers(services: Services, kafka: KafkaSettings, count: int) -> None:
    """Start or stop ``worker<i>`` processes until ``count`` run, then wait until the consumer
    group of IMAGE_ADJUSTER has ``count`` members with partitions (a worker not yet assigned
    would be counted but would do nothing)."""
    names = worker_names(services)
    while len(names) > count:
        name = names.pop()
        proc = services.procs.pop(name)
        stop_pid(proc.pid, timeout=20, popen=proc)
    index = 1
    while len(names) < count:
        name = f"worker{index}"
        if name not in services.procs:
            services.start(name, *WORKER_ARGS)
            names.append(name)
        index += 1
    group = f"{services.env['WORKER_GROUP_PREFIX']}.{TaskType.IMAGE_ADJUSTER.slug}"
    admin = AdminClient(kafka.client_config())

    def settled() -> bool:
        try:
            desc = admin.describe_consumer_groups([group])[group].result(10)
        except Exception:  # noqa: BLE001 - the group may not exist yet: ask again
            return False
        members = desc.members
        return (len(members) == count and str(desc.state).endswith("STABLE")
                and all(m.assignment and m.assignment.topic_partitions for m in members))

    if not wait_until(settled, 120, interval=0.5, abort=services.dead):
        raise RuntimeError(f"the worker group {group} did not settle on {count} members in 120 s")


class Clients:
    """``count`` threads running tasks back to back until stopped; each completed task is kept
    with the monotonic time its COMPLETED answer arrived."""

    def __init__(self, base_url: str, key: str, body: dict, count: int) -> None:
        self.results: list[tuple[float, float]] = []  # (done at, latency ms)
        self.errors: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(base_url, key, body), daemon=True,
                                          name=f"client-{i}") for i in range(count)]

    def _loop(self, base_url: str, key: str, body: dict) -> None:
        with LeanClient(base_url, key) as client:
            while not self._stop.is_set():
                try:
                    latency = run_task(client, body, "wait", 0.0)["total"]
                except Exception as exc:  # noqa: BLE001 - counted and reported, not fatal
                    with self._lock:
                        self.errors.append((time.monotonic(), f"{type(exc).__name__}: {exc}"[:300]))
                    client.close()  # a broken connection is reopened by the next request
                    continue
                with self._lock:
                    self.results.append((time.monotonic(), latency))

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(45)


def run_one(services: Services, stack_pids: dict[str, int | None], base_url: str, key: str,
            body: dict, args: argparse.Namespace, workers: int) -> dict[str, Any]:
    roots = {"api": services.procs["api"].pid, "projector": services.procs["projector"].pid,
             **({"processors": services.procs["processors"].pid} if "processors" in services.procs else {}),
             **{n: services.procs[n].pid for n in worker_names(services)}, **stack_pids}
    # The clients are this process alone: its descendants are the services.
    procs = ProcessSet(roots, alone={"clients": os.getpid()})
    clients = Clients(base_url, key, body, args.clients)
    say(f"{workers} worker(s): {args.clients} clients, {args.warmup} s warm-up, {args.duration} s measured...")
    clients.start()
    # Warm: a worker just started spends seconds on its first task (imports, its handler process),
    # so first as many tasks done as there are clients, then --warmup seconds more.
    if not wait_until(lambda: len(clients.results) >= args.clients, 300, interval=0.2, abort=services.dead):
        clients.stop()
        raise RuntimeError(f"fewer than {args.clients} tasks done in 300 s of warm-up: {clients.errors[:3]}")
    time.sleep(args.warmup)  # then a length of time, so that the window starts in the steady state
    first = procs.sample()
    state_before, t0 = machine_state(), time.monotonic()
    time.sleep(args.duration)
    t1 = time.monotonic()
    last = procs.sample()
    state_after = machine_state()
    clients.stop()
    services.check()
    wall = t1 - t0
    done = [lat for at, lat in clients.results if t0 <= at < t1]
    errors = [msg for at, msg in clients.errors if t0 <= at < t1]
    cpu = cpu_percent(first.cpu_s, last.cpu_s, wall)
    cpu["workers"] = round(sum(v for n, v in cpu.items() if n.startswith("worker")), 1)
    machine_cpu = cpu_between(state_before, state_after)
    per_service = {n: v for n, v in cpu.items() if n != "workers"}
    api_cpu = last.cpu_s["api"] - first.cpu_s["api"]
    return {
        "workers": workers, "clients": args.clients, "duration_s": round(wall, 1),
        "tasks": len(done), "tasks_per_s": round(len(done) / wall, 1),
        "latency_ms": summary(done) if done else None, "failed": len(errors), "failures": errors[:5],
        "api_cpu_ms_per_task": round(api_cpu / len(done) * 1e3, 2) if done else None,
        "cpu_pct": cpu, "saturation": saturated(per_service), "rss_mib": last.rss_mib, "pss_mib": last.pss_mib,
        # Everything on the machine, other sessions included: what the load average says too.
        # machine_cpu_pct in % of one core (200 = both cores), as cpu_pct; machine_cpu in % of all.
        "machine_cpu_pct": round(machine_cpu["busy_cpu_s"] / wall * 100, 1) if machine_cpu else None,
        "machine_cpu": machine_cpu, "before": state_before, "after": state_after}


def table(runs: list[dict[str, Any]]) -> str:
    names = sorted({n for r in runs for n in r["cpu_pct"]}, key=lambda n: (n.startswith("worker") and n != "workers", n))
    head = f"{'workers':>7}{'tasks/s':>9}{'p50 ms':>10}{'p99 ms':>10}{'fail':>5}{'api ms/task':>12}  cpu % of one core"
    lines = [head]
    for r in runs:
        lat = r["latency_ms"] or {"p50": float("nan"), "p99": float("nan")}
        cpu = " ".join(f"{n}={r['cpu_pct'][n]:g}" for n in names if n in r["cpu_pct"])
        lines.append(f"{r['workers']:>7}{r['tasks_per_s']:>9}{lat['p50']:>10.1f}{lat['p99']:>10.1f}{r['failed']:>5}"
                     f"{r['api_cpu_ms_per_task'] or 0:>12}  {cpu}")
        s = r["saturation"]
        lines.append(f"{'':7}busiest: {s['busiest']} {s['busiest_pct']} %; ours {s['machine_pct']} % of "
                     f"{s['cores'] * 100}; {describe(r['before'], r['after'])}")
        lines.append(f"{'':7}PSS MiB: " + " ".join(f"{n}={v:g}" for n, v in r["pss_mib"].items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent REST clients")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per worker count")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="worker counts to run, in order")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for every service")
    parser.add_argument("--no-processors", action="store_true", help="do not run the Faust processors")
    parser.add_argument("--json", action="store_true", help="one JSON line with every figure on stdout")
    args = parser.parse_args()
    if args.clients < 1 or args.duration <= 0 or any(w < 1 for w in args.workers):
        parser.error("--clients, --duration and every --workers count must be positive")
    report: dict[str, Any] = {
        "bench": "load", "clients": args.clients, "duration": args.duration, "warmup": args.warmup,
        "workers": args.workers, "overrides": args.overrides, "processors": not args.no_processors,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "before": machine_state()}
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="bench-load-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        stack_pids = start_stack(stack, workdir)
        deploy_args = argparse.Namespace(overrides=args.overrides, no_processors=args.no_processors,
                                         start_worker=False)
        kafka, services, base_url, key, image = deploy(stack, workdir, deploy_args)
        body = {"task_type": "IMAGE_ADJUSTER", "base_image_url": image.as_uri(),
                "brightness": 0.1, "contrast": 0.2, "warmth": 0.3}
        runs = []
        for count in args.workers:
            scale_workers(services, kafka, count)
            runs.append(run_one(services, stack_pids, base_url, key, body, args, count))
            say(table(runs[-1:]))
    report["runs"] = runs
    report["after"] = machine_state()
    report["machine_cpu"] = cpu_between(report["before"], report["after"])
    say(table(runs))
    if args.json:
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
