"""Benchmark: POST /tasks -> COMPLETED visible through GET /tasks/{id}, against a bare round trip.

The deployment runs as compose runs it, one process each, on the local stack (Kafka + PostgreSQL,
started here unless ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` are set): ``computectl``
``processors`` (Faust; not on the measured path), ``projector``, ``api`` and ``worker --types
image_adjuster`` (classical provider: a 32x32 ``file://`` PNG takes ~1 ms, so what is measured is
the plumbing). Each client sends one task at a time: ``POST /api/v1/tasks``, then
``GET /api/v1/tasks/{id}`` every ``--poll-ms`` until it answers COMPLETED (``--mode poll``), one
``GET /api/v1/tasks/{id}?wait=30`` that answers when the task has ended (``--mode wait``, the long
poll), or the task's SSE stream to COMPLETED and one confirming GET (``--mode sse``).
Latency: from just before the POST to the end of the GET that shows COMPLETED.

Breakdown, from the row's ``occurred_at`` stamps (API and worker, this machine's clock) against the
client's clock: ``post`` (POST round trip), ``to_processing`` (POST sent -> PROCESSING: API,
produce, the worker's fetch), ``worker`` (PROCESSING -> COMPLETED; ``handler`` is its
``metadata.timing_ms``), ``completed_to_visible`` (COMPLETED -> the GET showing it: produce, the
projector, the poll interval). ``--tap`` consumes the status topic here too and splits that last
segment where the record could first be fetched from the broker.

The floor, same run and broker, one sample before each task so that both see the same load: a bare
confluent-kafka produce (``linger.ms`` 0, ``acks=all``) to a 1-partition topic and an assigned
consumer polled until that record arrives. Target (the issue): p99 <= 25 ms and <= 5x floor p99.

    .venv/bin/python bench/bench_api_latency.py [--count 1000] [--warmup 1000] [--concurrency 1]
        [--mode poll|wait|sse] [--poll-ms 2] [--set NAME=VALUE ...] [--tap] [--no-processors]

The results folder is a temp folder deleted at the end, so it is not fsynced (``RESULTS_FSYNC``
false, as ``computectl dev up`` sets it for its own folder); ``--set RESULTS_FSYNC=true`` measures
the durable default. ``--set`` adds an environment variable for every service
(``KAFKA_CLIENT_EXTRA=...``). Progress and the table go to stderr, one JSON line with every
figure to stdout.
"""
from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from machine import cpu_between, describe, machine_state  # noqa: E402 - bench/, run as a script or imported
from PIL import Image  # noqa: E402

from devstack.procs import free_port, spawn, stop_pid, tail, wait_until  # noqa: E402
from projection.db.apikeys import create_key  # noqa: E402
from projection.db.migrate import migrate  # noqa: E402
from schemas.codec import EventCodec  # noqa: E402
from schemas.events import StatusChanged  # noqa: E402
from schemas.kafka_settings import KafkaSettings  # noqa: E402
from schemas.topic_admin import ensure_topics  # noqa: E402

TARGET_P99_MS, TARGET_FLOOR_RATIO = 25.0, 5.0
COMPUTECTL = str(Path(sys.executable).with_name("computectl"))
TASK_DEADLINE_S = 30.0
say = functools.partial(print, file=sys.stderr, flush=True)  # stdout holds only the JSON line
_json_dumps = json.dumps  # LeanClient.post's parameter is called json, as httpx's is


class Services:
    """The deployment's processes, each logging to ``<workdir>/<name>.log``."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env = workdir, env
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> None:
        self.procs[name] = spawn([COMPUTECTL, *args], log_path=self.workdir / f"{name}.log",
                                 detached=False, env=self.env, cwd=REPO)

    def dead(self) -> str | None:
        """Why a service exited, if one did: a dead worker must not look like a slow one."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return f"{name} exited ({proc.returncode}):\n{tail(self.workdir / f'{name}.log')}"
        return None

    def check(self) -> None:
        if reason := self.dead():
            raise RuntimeError(reason)

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                stop_pid(proc.pid, timeout=20, popen=proc)

    def wait_ready(self, base_url: str) -> None:
        def ready() -> bool:
            try:
                return httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        if not wait_until(ready, 120, interval=0.2, abort=self.dead):
            raise RuntimeError("the API did not become ready in 120 s")


def deploy(stack: ExitStack, workdir: Path, args: argparse.Namespace) -> tuple[
        KafkaSettings, Services, str, str, Path]:
    """Stack, fresh topics/groups/API key (nothing left from another run), the four services.
    Returns the Kafka settings, the services, the API's URL, an API key and the input image."""
    bootstrap, db_url = os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("DATABASE_URL")
    if not (bootstrap and db_url):
        from devstack.stack import LocalStack

        say("starting the local stack (Kafka, PostgreSQL)...")
        local = LocalStack(s3=False, results_dir=workdir / "results")
        stack.callback(local.stop)
        local.start()
        bootstrap, db_url = local.kafka.bootstrap_servers, local.postgres.url
    prefix = f"benchapi{uuid.uuid4().hex[:8]}"
    kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    ensure_topics(kafka)
    migrate(db_url)
    key, _ = create_key(db_url, f"bench-{prefix}")
    image = workdir / "inputs" / "look.png"
    image.parent.mkdir(parents=True)
    Image.new("RGB", (32, 32), (120, 90, 200)).save(image)
    (workdir / "results").mkdir(exist_ok=True)
    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC_PREFIX": prefix,
           "KAFKA_PARTITIONS": str(kafka.partitions), "DATABASE_URL": db_url,
           # A temp folder deleted at the end, as the local stack's is (its env() says the same).
           "RESULTS_URL": (workdir / "results").as_uri(), "RESULTS_FSYNC": "false",
           "INPUT_ALLOWED_FILE_ROOTS": str(workdir),
           "WORKER_DEVICE": "cpu", "WORKER_GROUP_PREFIX": f"{prefix}-workers",
           "COMPUTE_API_WORKER_GROUP_PREFIX": f"{prefix}-workers",
           "PROCESSORS_DATADIR": str(workdir / "processors"),
           "PROCESSORS_TABLE_STANDBY_REPLICAS": "0", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           **dict(item.split("=", 1) for item in args.overrides)}
    services = Services(workdir, env)
    stack.callback(services.stop)
    say("starting processors, projector, API, worker...")
    if not args.no_processors:
        services.start("processors", "processors", "--no-create-topics", "--log-level", "WARNING")
    services.start("projector", "projector")
    services.start("api", "api", "--port", str(port))
    if getattr(args, "start_worker", True):  # bench_backlog.py queues its tasks before any worker
        services.start("worker", "worker", "--types", "image_adjuster", "--log-level", "WARNING")
    base_url = f"http://127.0.0.1:{port}"
    services.wait_ready(base_url)
    return kafka, services, base_url, key, image


class Floor:
    """Bare produce -> consume round trips on one partition of the same broker."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.topic = f"{kafka.topic_prefix}.bench-floor"
        admin = AdminClient(kafka.client_config())  # held: a collected client fails its futures
        admin.create_topics([NewTopic(self.topic, 1, 1)])[self.topic].result(30)
        self.producer = Producer({**kafka.producer_config(), "linger.ms": 0, "acks": "all",
                                  "enable.idempotence": True})
        self.consumer = Consumer({**kafka.client_config(), "group.id": f"bench-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False})
        # Offset 0 of the new topic: an end offset resolved after the first produce would skip it.
        self.consumer.assign([TopicPartition(self.topic, 0, 0)])
        for _ in range(20):  # connections and metadata, not measured
            self.sample()

    def sample(self) -> float:
        """One round trip, in ms."""
        payload = uuid.uuid4().bytes
        start = time.perf_counter()
        self.producer.produce(self.topic, key=payload, value=payload)
        self.producer.poll(0)
        while time.perf_counter() - start < 10:
            msg = self.consumer.poll(1.0)
            if msg is not None and not msg.error() and msg.value() == payload:
                elapsed = (time.perf_counter() - start) * 1e3
                self.producer.poll(0)  # serve the delivery report outside the timing
                return elapsed
        raise RuntimeError("floor record not received in 10 s")

    def close(self) -> None:
        self.producer.flush(10)
        self.consumer.close()
        del self.producer, self.consumer  # destroyed now, not after the broker stopped


class Tap:
    """A thread reading the status topic: when each task's COMPLETED could first be fetched."""

    def __init__(self, kafka: KafkaSettings) -> None:
        topic, self._codec = kafka.topics.status, EventCodec()
        self.consumer = Consumer({**kafka.client_config(), "group.id": f"bench-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False})
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in parts])
        self.fetched: dict[str, float] = {}  # task id -> wall clock of the first read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tap", daemon=True)
        self._thread.start()
        sys.setswitchinterval(0.0005)  # the tap thread must not wait 5 ms for the GIL
        time.sleep(1.0)  # assigned and at the end before the first task

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.consumer.poll(0.1)
            if msg is None or msg.error():
                continue
            now = time.time()
            event = self._codec.decode(msg.value(), expect=StatusChanged)
            if event.status.value == "COMPLETED":
                self.fetched.setdefault(event.envelope.task_id, now)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.consumer.close()


class _Response:
    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code, self.text = status_code, body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.text)


class LeanClient:
    """The two calls a task needs (POST and GET with JSON) on one kept-alive ``http.client``
    connection: the client shares the two cores with what it measures, and httpx spent about
    1.5 ms of CPU per task more. ``--mode sse`` streams, so it keeps httpx."""

    def __init__(self, base_url: str, api_key: str) -> None:
        url = urlsplit(base_url)
        self._conn = http.client.HTTPConnection(url.hostname, url.port, timeout=TASK_DEADLINE_S + 10)
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    def _request(self, method: str, path: str, body: bytes | None = None) -> _Response:
        self._conn.request(method, path, body=body, headers=self._headers)
        resp = self._conn.getresponse()
        return _Response(resp.status, resp.read())

    def post(self, path: str, json: Any) -> _Response:  # noqa: A002 (httpx's name)
        return self._request("POST", path, _json_dumps(json).encode())

    def get(self, path: str, params: dict[str, Any] | None = None) -> _Response:
        return self._request("GET", f"{path}?{urlencode(params)}" if params else path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> LeanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_task(client: Any, body: dict, mode: str, poll_s: float) -> dict[str, Any]:
    sent_wall, t0 = time.time(), time.perf_counter()
    resp = client.post("/api/v1/tasks", json=body)
    t_post = time.perf_counter()
    if resp.status_code != 202:
        raise RuntimeError(f"POST answered {resp.status_code}: {resp.text}")
    task_id = resp.json()["task_id"]
    url = f"/api/v1/tasks/{task_id}"
    gets, get_s = 0, 0.0

    params = {"wait": TASK_DEADLINE_S} if mode == "wait" else None

    def get() -> dict | None:
        nonlocal gets, get_s
        if time.perf_counter() - t0 > TASK_DEADLINE_S:
            raise RuntimeError(f"{url} not COMPLETED in {TASK_DEADLINE_S} s")
        g0 = time.perf_counter()
        r = client.get(url, params=params)
        gets, get_s = gets + 1, get_s + time.perf_counter() - g0
        if r.status_code == 404:  # not projected yet
            return None
        if r.status_code != 200:
            raise RuntimeError(f"GET answered {r.status_code}: {r.text}")
        row = r.json()
        if row["status"] in ("FAILED", "CANCELLED"):
            raise RuntimeError(f"{url} ended {row['status']}: {row.get('error')}")
        return row

    row = None
    if mode == "sse":
        while (row := get()) is None:  # the stream answers 404 until the row exists
            time.sleep(poll_s)
        if row["status"] != "COMPLETED":
            with client.stream("GET", f"{url}/events") as stream:
                for line in stream.iter_lines():
                    if '"status":"COMPLETED"' in line or line.startswith("event: end"):
                        break
            row = get()
    while row is None or row["status"] != "COMPLETED":
        if poll_s:
            time.sleep(poll_s)
        row = get()
    t_done = time.perf_counter()  # the end of the GET that showed COMPLETED
    visible_wall = sent_wall + (t_done - t0)
    started = datetime.fromisoformat(row["started_at"]).timestamp()
    completed = datetime.fromisoformat(row["completed_at"]).timestamp()
    return {"task_id": task_id, "total": (t_done - t0) * 1e3, "post": (t_post - t0) * 1e3,
            "to_processing": (started - sent_wall) * 1e3, "worker": (completed - started) * 1e3,
            "handler": float(row["result"]["metadata"]["timing_ms"]),
            "completed_to_visible": (visible_wall - completed) * 1e3,
            "completed_wall": completed, "visible_wall": visible_wall,
            "gets": gets, "get": get_s / gets * 1e3}


def measure(clients: list[Any], body: dict, count: int, mode: str, poll_s: float,
            floor: Floor | None) -> tuple[list[dict], list[float]]:
    """``count`` tasks shared by one thread per client. The first client takes a floor sample
    before each of its tasks, so the floor sees the same load as the tasks around it."""
    floor_ms: list[float] = []

    def client_loop(index: int, client: Any) -> list[dict]:
        results = []
        for _ in range(count // len(clients) + (index < count % len(clients))):
            if floor is not None and index == 0:
                floor_ms.append(floor.sample())
            results.append(run_task(client, body, mode, poll_s))
        return results

    with ThreadPoolExecutor(len(clients)) as pool:
        futures = [pool.submit(client_loop, i, c) for i, c in enumerate(clients)]
        return [r for f in futures for r in f.result()], floor_ms


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def rank(q: float) -> float:  # nearest rank
        return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))]

    return {"p50": round(rank(50), 2), "p95": round(rank(95), 2), "p99": round(rank(99), 2),
            "max": round(ordered[-1], 2), "mean": round(statistics.fmean(ordered), 2)}


def table(report: dict[str, Any]) -> str:
    cols = ("p50", "p95", "p99", "max", "mean")
    lines = [" " * 36 + "".join(f"{c:>9}" for c in cols)]
    for name, stats in (("POST -> COMPLETED visible via GET", report["latency_ms"]),
                        ("floor: bare produce -> consume", report["floor_ms"]),
                        *((f"  {n}", st) for n, st in report["breakdown_ms"].items())):
        lines.append(f"{name:36}" + "".join(f"{stats[c]:9.2f}" for c in cols))
    t = report["target"]
    lines += [f"(ms; {report['count']} tasks, concurrency {report['concurrency']}, mode "
              f"{report['mode']}, poll {report['poll_ms']} ms, {report['gets_per_task']} GETs per "
              f"task, {report['tasks_per_s']} tasks/s; {describe(report['before'], report['after'])})",
              f"p99 / floor p99 = {t['ratio_p99']}; target p99 <= {TARGET_P99_MS:g} ms and <= "
              f"{TARGET_FLOOR_RATIO:g}x floor: {'met' if t['met'] else 'NOT met'}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="measured tasks")
    parser.add_argument("--warmup", type=int, default=1000,
                        help="tasks run first, not measured: the broker is a JVM that spends its "
                             "first thousand or so tasks compiling (its CPU per task halves)")
    parser.add_argument("--concurrency", type=int, default=1, help="clients submitting at once")
    parser.add_argument("--mode", choices=["poll", "wait", "sse"], default="poll",
                        help="poll: GET every --poll-ms; wait: GET ?wait= (a long poll that "
                             "answers when the task ends); sse: follow /events")
    parser.add_argument("--poll-ms", type=float, default=2.0,
                        help="sleep between two GETs (0: back to back)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="NAME=VALUE", help="an environment variable for every service")
    parser.add_argument("--tap", action="store_true",
                        help="also read the status topic here, to split COMPLETED -> visible")
    parser.add_argument("--per-task", type=Path, metavar="FILE",
                        help="also write every task's segments (ms) to FILE as JSON")
    parser.add_argument("--no-processors", action="store_true",
                        help="do not run the Faust processors (not on the measured path)")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "bench": "api_latency", **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "before": machine_state()}
    poll_s = args.poll_ms / 1e3
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="bench-api-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        kafka, services, base_url, key, image = deploy(stack, workdir, args)
        body = {"task_type": "IMAGE_ADJUSTER", "base_image_url": image.as_uri(),
                "brightness": 0.1, "contrast": 0.2, "warmth": 0.3}
        clients = [stack.enter_context(httpx.Client(
            base_url=base_url, timeout=httpx.Timeout(10.0, read=30.0),
            headers={"Authorization": f"Bearer {key}"}) if args.mode == "sse"
            else LeanClient(base_url, key)) for _ in range(args.concurrency)]
        say(f"warm-up: {args.warmup} tasks...")  # assignments, connections, caches
        measure(clients[:1], body, max(1, args.warmup), args.mode, poll_s, None)
        services.check()
        floor = Floor(kafka)
        stack.callback(floor.close)
        tap = Tap(kafka) if args.tap else None
        if tap is not None:
            stack.callback(tap.close)
        say(f"measuring {args.count} tasks (and the floor, interleaved)...")
        t_run = time.perf_counter()
        results, floor_ms = measure(clients, body, args.count, args.mode, poll_s, floor)
        run_s = time.perf_counter() - t_run
        services.check()
        report["after"] = machine_state()
        report["machine_cpu"] = cpu_between(report["before"], report["after"])

    report.update(run_s=round(run_s, 1), tasks_per_s=round(len(results) / run_s, 1),
                  latency_ms=summary([r["total"] for r in results]), floor_ms=summary(floor_ms),
                  gets_per_task=round(statistics.fmean(r["gets"] for r in results), 1))
    report["breakdown_ms"] = {name: summary([r[name] for r in results]) for name in (
        "post", "to_processing", "worker", "handler", "completed_to_visible", "get")}
    tapped = [(r, tap.fetched[r["task_id"]]) for r in results
              if tap is not None and r["task_id"] in tap.fetched]
    if tapped:
        report["tapped"] = len(tapped)
        report["breakdown_ms"]["completed_to_fetchable"] = summary(
            [(t - r["completed_wall"]) * 1e3 for r, t in tapped])
        report["breakdown_ms"]["fetchable_to_visible"] = summary(
            [(r["visible_wall"] - t) * 1e3 for r, t in tapped])
    p99, floor_p99 = report["latency_ms"]["p99"], report["floor_ms"]["p99"]
    report["target"] = {
        "ratio_p99": round(p99 / floor_p99, 2),
        "ratio_p50": round(report["latency_ms"]["p50"] / report["floor_ms"]["p50"], 2),
        "met": p99 <= TARGET_P99_MS and p99 <= TARGET_FLOOR_RATIO * floor_p99}
    if args.per_task is not None:
        args.per_task.write_text(json.dumps(results))
    print(json.dumps(report), flush=True)
    say(table(report))


if __name__ == "__main__":
    main()
