"""Peer benchmark: one small task's round trip on Celery 5 + Redis against ours, interleaved.

The stack users would pick instead (issue 19), measured in the same process tree and the same
minutes as ours, one task at a time, the same work on both sides (an IMAGE_ADJUSTER on a 32x32
PNG: see bench/peer_celery.py):

* ``celery``: ``delay(...).get()`` on a solo worker (``--pool solo``, ``acks_late``, prefetch 1),
  Redis broker and Redis result backend (a ``redis-server`` started here on a free port);
* ``kafka``: ours, Kafka only: ``TaskProducer.submit`` (its DEFAULT settings) -> a real worker
  (``computectl worker --types image_adjuster``) -> COMPLETED read from the status topic by an
  assigned consumer (the records are keyed by task id: only that task's are decoded);
* ``rest`` (unless ``--no-rest``): ours through the API, POST then ``GET ?wait=`` until COMPLETED,
  with bench/bench_api_latency.py's deployment and client (imported, not copied).

Our services are bench_api_latency's ``deploy`` (Kafka + PostgreSQL started here unless
``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` are set; processors, projector, API, worker).
Each round runs one task of each path in turn, so every path sees the same load. Latency: from
just before the submit to the moment the caller holds the COMPLETED answer. Printed: p50, p90,
p99, max per path and each path's p99 over Celery's p99 (the issue's targets: kafka <= 1.5x,
rest <= 3x and <= 25 ms), with the load average before and after and the machine's busy % and
steal % between (bench/machine.py); ``--json``: one JSON line.

Needs the bench extra and Redis: ``make bench-deps`` (``pip install -e .[bench]`` and Debian's
``redis-server`` when it is missing), or ``--redis-server PATH``.

    .venv/bin/python bench/bench_peer.py [--count 1000] [--warmup 300] [--no-rest] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_api_latency import (  # noqa: E402 - bench/ is not a package
    REPO,
    TASK_DEADLINE_S,
    LeanClient,
    deploy,
    run_task,
)
from confluent_kafka import OFFSET_END, Consumer, Message, TopicPartition  # noqa: E402
from machine import cpu_between, describe, machine_state  # noqa: E402

from devstack.procs import free_port, spawn, stop_pid, tail, wait_until  # noqa: E402
from producers.submit import TaskProducer  # noqa: E402
from schemas.codec import EventCodec  # noqa: E402
from schemas.kafka_settings import KafkaSettings  # noqa: E402

TARGET_KAFKA_RATIO, TARGET_REST_RATIO, TARGET_REST_P99_MS = 1.5, 3.0, 25.0
PARAMS = {"brightness": 0.1, "contrast": 0.2, "warmth": 0.3}


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


class Peer:
    """redis-server and a solo Celery worker, each logging to the work folder."""

    def __init__(self, stack: ExitStack, workdir: Path, redis_server: str) -> None:
        port = free_port()
        self.url = f"redis://127.0.0.1:{port}"
        redis = spawn([redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                       "--appendonly", "no", "--dir", str(workdir)],
                      log_path=workdir / "redis.log", detached=False)
        stack.callback(stop_pid, redis.pid, timeout=10, popen=redis)
        env = {**os.environ, "PEER_REDIS_URL": self.url,
               "PYTHONPATH": os.pathsep.join([str(BENCH), str(REPO)])}
        worker = spawn([sys.executable, "-m", "celery", "-A", "peer_celery", "worker", "--pool", "solo",
                        "--concurrency", "1", "--prefetch-multiplier", "1", "--loglevel", "WARNING",
                        "--without-gossip", "--without-mingle", "--without-heartbeat"],
                       log_path=workdir / "celery.log", detached=False, env=env, cwd=BENCH)
        stack.callback(stop_pid, worker.pid, timeout=20, popen=worker)
        self._procs = {"redis-server": (redis, workdir / "redis.log"),
                       "celery worker": (worker, workdir / "celery.log")}
        from peer_celery import make_app  # the bench extra; imported once Redis is up

        self.app = make_app(self.url)
        self.task = self.app.tasks["peer.image_adjust"]
        stack.callback(self.app.close)

    def dead(self) -> str | None:
        for name, (proc, log) in self._procs.items():
            if proc.poll() is not None:
                return f"{name} exited ({proc.returncode}):\n{tail(log)}"
        return None

    def run(self, image_url: str, results_dir: str) -> float:
        t0 = time.perf_counter()
        self.task.delay(image_url, results_dir=results_dir, **PARAMS).get(timeout=TASK_DEADLINE_S)
        return (time.perf_counter() - t0) * 1e3


class Direct:
    """Ours without the API: TaskProducer.submit, COMPLETED read from the status topic."""

    def __init__(self, kafka: KafkaSettings, producer_config: dict[str, Any] | None = None) -> None:
        # Default settings unless producer_config (--compare-linger's second path).
        self.producer = TaskProducer(kafka, source="bench-peer", producer_config=producer_config)
        self.consumer = Consumer({**kafka.client_config(), "group.id": f"bench-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False})
        topic = kafka.topics.status
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in parts])
        self.codec = EventCodec()

    def submit(self, image_url: str) -> str:
        return self.producer.submit("IMAGE_ADJUSTER", {"base_image_url": image_url, **PARAMS})

    def statuses(self, task_id: str, started: float,
                 clock: Callable[[], float] = time.perf_counter) -> Iterator[tuple[str, Message]]:
        """The task's status records as they arrive, up to its COMPLETED (iterate to the end:
        its PENDING/QUEUED are produced after, outside the caller's timing); RuntimeError when
        it ends otherwise, or not within TASK_DEADLINE_S of ``started`` by ``clock``."""
        key = task_id.encode()
        while clock() - started < TASK_DEADLINE_S:
            msg = self.consumer.poll(0.05)
            if msg is not None and not msg.error() and msg.key() == key:
                status = self.codec.decode_dict(msg.value())[1]["status"]
                yield status, msg
                if status == "COMPLETED":
                    self.producer.poll(0)
                    return
                if status in ("FAILED", "CANCELLED"):
                    raise RuntimeError(f"task {task_id} ended {status}")
            self.producer.poll(0)
        raise RuntimeError(f"task {task_id} not COMPLETED in {TASK_DEADLINE_S} s")

    def run(self, image_url: str) -> float:
        t0 = time.perf_counter()
        elapsed = 0.0
        for status, _ in self.statuses(self.submit(image_url), t0):
            if status == "COMPLETED":
                elapsed = (time.perf_counter() - t0) * 1e3
        return elapsed

    def close(self) -> None:
        self.producer.close(10)
        self.consumer.close()
        del self.producer, self.consumer  # destroyed now, not after the broker stopped


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def rank(q: float) -> float:  # nearest rank
        return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))]

    return {"p50": round(rank(50), 2), "p90": round(rank(90), 2), "p99": round(rank(99), 2),
            "max": round(ordered[-1], 2), "n": len(ordered)}


def rounds(paths: dict[str, Any], count: int, check: Any) -> dict[str, list[float]]:
    """``count`` rounds, one task of each path per round, in turn."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(count):
        for name, run in paths.items():
            samples[name].append(run())
        if i % 50 == 49:
            check()
    return samples


def report(args: argparse.Namespace, samples: dict[str, list[float]], before: dict, after: dict) -> dict:
    out: dict[str, Any] = {"bench": "peer", "count": args.count, "warmup": args.warmup,
                           "machine": f"{os.cpu_count()} cores", "before": before, "after": after,
                           "machine_cpu": cpu_between(before, after),
                           "latency_ms": {name: stats(v) for name, v in samples.items()}}
    celery_p99 = out["latency_ms"]["celery"]["p99"]
    out["ratio_to_celery_p99"] = {name: round(s["p99"] / celery_p99, 2)
                                  for name, s in out["latency_ms"].items()}
    ratios, lat = out["ratio_to_celery_p99"], out["latency_ms"]
    out["target"] = {"kafka": ratios["kafka"] <= TARGET_KAFKA_RATIO}
    if "rest" in lat:
        out["target"]["rest"] = ratios["rest"] <= TARGET_REST_RATIO and lat["rest"]["p99"] <= TARGET_REST_P99_MS
    return out


def table(out: dict) -> str:
    cols = ("p50", "p90", "p99", "max")
    lines = [f"{'path':<14}" + "".join(f"{c:>9}" for c in cols) + f"{'p99/celery p99':>16}"]
    for name, s in out["latency_ms"].items():
        lines.append(f"{name:<14}" + "".join(f"{s[c]:9.2f}" for c in cols)
                     + f"{out['ratio_to_celery_p99'][name]:>15.2f}x")
    lines.append(f"(ms; {out['count']} rounds after {out['warmup']} warm-up; "
                 f"{describe(out['before'], out['after'])}; targets kafka <= "
                 f"{TARGET_KAFKA_RATIO}x, rest <= {TARGET_REST_RATIO}x and <= {TARGET_REST_P99_MS:g} ms: "
                 + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in out["target"].items()) + ")")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="measured rounds (one task per path each)")
    parser.add_argument("--warmup", type=int, default=300,
                        help="rounds first, not measured (JVM compilation, connections, caches)")
    parser.add_argument("--no-rest", action="store_true", help="leave out the REST ?wait= path")
    parser.add_argument("--no-processors", action="store_true",
                        help="do not run the Faust processors (on no measured path)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for every one of our services")
    parser.add_argument("--compare-linger", type=int, metavar="MS",
                        help="also run the Kafka path with the producer's linger.ms MS (path kafka-linger<MS>)")
    parser.add_argument("--redis-server", default=shutil.which("redis-server"),
                        help="the redis-server binary (default: the one on PATH)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = parser.parse_args()
    if not args.redis_server:
        parser.error("no redis-server on PATH: run `make bench-deps` (or pass --redis-server)")
    before = machine_state()
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="bench-peer-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        say("starting our services...")
        kafka, services, base_url, key, image = deploy(stack, workdir, argparse.Namespace(
            overrides=args.overrides, no_processors=args.no_processors))
        say("starting redis-server and a solo Celery worker...")
        peer = Peer(stack, workdir, args.redis_server)
        celery_results = workdir / "celery-results"
        celery_results.mkdir()
        direct = Direct(kafka)
        stack.callback(direct.close)
        image_url = image.as_uri()
        paths: dict[str, Any] = {"celery": lambda: peer.run(image_url, str(celery_results)),
                                 "kafka": lambda: direct.run(image_url)}
        if args.compare_linger is not None:
            other = Direct(kafka, {"linger.ms": args.compare_linger})
            stack.callback(other.close)
            paths[f"kafka-linger{args.compare_linger}"] = lambda: other.run(image_url)
        if not args.no_rest:
            client = stack.enter_context(LeanClient(base_url, key))
            body = {"task_type": "IMAGE_ADJUSTER", "base_image_url": image_url, **PARAMS}
            paths["rest"] = lambda: run_task(client, body, "wait", 0.0)["total"]

        def check() -> None:
            services.check()
            if reason := peer.dead():
                raise RuntimeError(reason)

        # The first task of each path waits for assignments and connections: not measured.
        if not wait_until(lambda: bool(peer.run(image_url, str(celery_results))), 120, abort=peer.dead):
            raise RuntimeError("the Celery worker did not answer in 120 s")
        say(f"warm-up: {args.warmup} rounds...")
        rounds(paths, max(1, args.warmup), check)
        say(f"measuring {args.count} rounds...")
        samples = rounds(paths, args.count, check)
        check()
    out = report(args, samples, before, machine_state())
    print(json.dumps(out) if args.json else table(out), flush=True)


if __name__ == "__main__":
    main()
