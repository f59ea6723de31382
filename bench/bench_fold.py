"""Benchmark: status events per second through the lifecycle fold, Faust app vs plain loop.

One million status events (encoded once, produced to a fresh 4-partition status topic) go
through (a) the Faust app of ``processors/app.py`` (consume -> fold -> tasks table + changelog ->
state topic), run as ``python -m processors.cli`` in a subprocess, and (b) a plain confluent-kafka
consume-fold-produce loop (the Python floor) in this process. Both call the same
``processors.folding.fold_batch``: they differ only in the framework around it.

The events: tasks of 8 events each (PENDING, QUEUED, PROCESSING x5 with growing progress,
COMPLETED with a result), ``--in-flight`` tasks interleaved at a time, as a busy farm writes
them. Rate = events / (last - first state record's broker timestamp), the same clock for both;
CPU = user + system time per event of the folding process (all threads), the figure that does
not move with the machine's load.

    .venv/bin/python bench/bench_fold.py [--events 1000000] [--only faust|plain]
        [--in-flight 10000] [--set PROCESSORS_BATCH_MAX=5000 ...] [--profile out.prof]
        [--app-module MODULE] [--json]

Uses KAFKA_BOOTSTRAP_SERVERS when set, else starts a local broker. The events are encoded once
(cached in the temp dir) and produced to a fresh topic prefix for each run, so every run starts
from empty state topics and tables.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import signal
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import cpu_between, describe, machine_state  # noqa: E402 - bench/, the script's directory

from processors.folding import fold_batch  # noqa: E402
from schemas.codec import EventCodec  # noqa: E402
from schemas.enums import TaskStatus, TaskType  # noqa: E402
from schemas.events import Envelope, ResultMetadata, StatusChanged, TaskResult  # noqa: E402
from schemas.kafka_settings import KafkaSettings  # noqa: E402
from schemas.topic_admin import ensure_topics  # noqa: E402
from state.lifecycle import TaskState  # noqa: E402

PARTITIONS = 4
EVENTS_PER_TASK = 8
DEADLINE_S = 1800.0


# --------------------------------------------------------------------------- the events


def task_events(task_id: str, start: datetime) -> list[StatusChanged]:
    def status(i: int, st: TaskStatus, **fields: object) -> StatusChanged:
        env = Envelope(event_id=str(uuid.uuid4()), task_id=task_id, task_type=TaskType.GENERATION,
                       attempt=1, occurred_at=start + timedelta(milliseconds=100 * i), source="bench")
        return StatusChanged(envelope=env, status=st, worker_id="bench-worker", **fields)

    result = TaskResult(result_image_url=f"file:///results/{task_id}.png", seed=42,
                        metadata=ResultMetadata(model="sdxl", provider="diffusers", timing_ms=8000,
                                                width=1024, height=1024))
    return [status(0, TaskStatus.PENDING), status(1, TaskStatus.QUEUED),
            *(status(2 + i, TaskStatus.PROCESSING, progress=i / 4) for i in range(5)),
            status(7, TaskStatus.COMPLETED, result=result)]


def encode_events(count: int, in_flight: int) -> list[tuple[bytes, bytes]]:
    """``count`` encoded status events as (key, value), ``in_flight`` tasks interleaved."""
    codec = EventCodec()
    start = datetime.now(UTC)
    out: list[tuple[bytes, bytes]] = []
    tasks = count // EVENTS_PER_TASK
    for first in range(0, tasks, in_flight):
        group = []
        for _ in range(min(in_flight, tasks - first)):
            task_id = str(uuid.uuid4())
            group.append((task_id.encode(), [codec.encode(e) for e in task_events(task_id, start)]))
        for step in range(EVENTS_PER_TASK):
            out.extend((key, values[step]) for key, values in group)
    return out


def cached_events(count: int, in_flight: int) -> list[tuple[bytes, bytes]]:
    """The events, encoded once per (count, in_flight) and kept in the temp dir."""
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_fold-{count}-{in_flight}.pickle"
    if path.exists():
        return pickle.loads(path.read_bytes())
    events = encode_events(count, in_flight)
    path.write_bytes(pickle.dumps(events, protocol=pickle.HIGHEST_PROTOCOL))
    return events


def produce_events(kafka: KafkaSettings, events: list[tuple[bytes, bytes]]) -> float:
    """Produce the encoded events to the status topic; returns seconds."""
    producer = Producer({**kafka.producer_config(), "linger.ms": 20, "acks": "all",
                         "queue.buffering.max.messages": 1_000_000})
    topic, t0 = kafka.topics.status, time.perf_counter()
    for key, value in events:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0, "events not acknowledged"
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- measuring


def _consumer(kafka: KafkaSettings) -> Consumer:
    return Consumer({**kafka.client_config(), "group.id": f"bench-{uuid.uuid4().hex}",
                     "enable.auto.commit": False})


def end_offsets(kafka: KafkaSettings, topic: str) -> dict[int, int]:
    consumer = _consumer(kafka)
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
                return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                        for p in parts}
            except KafkaException:  # a just-created partition: no leader for a moment
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        consumer.close()


def committed(kafka: KafkaSettings, group: str, topic: str) -> int:
    consumer = Consumer({**kafka.client_config(), "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))
    finally:
        consumer.close()


def output_span(kafka: KafkaSettings, topic: str,
                since: dict[int, int] | None = None) -> tuple[float, float, int]:
    """(first, last) broker timestamps (s) of the records ``topic`` got after offsets ``since``,
    and their count."""
    ends = end_offsets(kafka, topic)
    since = since or {}
    consumer = _consumer(kafka)
    stamps: list[float] = []
    try:
        for partition, end in ends.items():
            start = since.get(partition, 0)
            for offset in {start, end - 1} if end > start else ():
                consumer.assign([TopicPartition(topic, partition, offset)])
                msg = None
                while msg is None or msg.error():
                    msg = consumer.poll(5)
                stamps.append(msg.timestamp()[1] / 1000.0)
    finally:
        consumer.close()
    return min(stamps), max(stamps), sum(ends.values()) - sum(since.values())


# --------------------------------------------------------------------------- (a) Faust


def run_faust(kafka: KafkaSettings, events: int, overrides: dict[str, str], datadir: Path,
              profile: str | None, module: str = "processors.cli") -> dict:
    group = f"{kafka.topic_prefix}.faust-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "KAFKA_TOPIC_PREFIX": kafka.topic_prefix, "KAFKA_PARTITIONS": str(PARTITIONS),
           "PROCESSORS_APP_ID": group, "PROCESSORS_DATADIR": str(datadir),
           "PROCESSORS_TABLE_STANDBY_REPLICAS": "0", **overrides}
    state_before = end_offsets(kafka, kafka.topics.state)  # empty: a fresh prefix
    cmd = [sys.executable, *(["-m", "cProfile", "-o", profile] if profile else []),
           "-m", module, "--no-create-topics", "--log-level", "WARNING"]
    with open(datadir / "faust.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + DEADLINE_S
    start: tuple[int, float] | None = None  # (committed, cpu seconds) once folding began
    try:
        while (done := committed(kafka, group, kafka.topics.status)) < events:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"faust app stopped or too slow; see {datadir / 'faust.log'}")
            if start is None and done:
                start = (done, cpu_seconds(proc.pid))
            time.sleep(0.5)  # polling the committed offsets of another process
        cpu = cpu_seconds(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    first, last, count = output_span(kafka, kafka.topics.state, state_before)
    start = start or (0, 0.0)
    return {"events": events, "seconds": last - first, "events_per_s": events / (last - first),
            "cpu_us_per_event": (cpu - start[1]) / (events - start[0]) * 1e6,
            "state_records": count, "exit_code": proc.returncode}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- (b) plain loop


def run_plain(kafka: KafkaSettings, events: int, batch_max: int) -> dict:
    """consume -> fold_batch -> produce the changed states; flush + commit every 2.8 s."""
    codec = EventCodec()
    topic, out = kafka.topics.status, kafka.topics.state
    consumer = Consumer({**kafka.client_config(), "group.id": f"{kafka.topic_prefix}.plain",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    producer = Producer({**kafka.producer_config(), "linger.ms": 10, "acks": "all",
                         "enable.idempotence": True, "queue.buffering.max.messages": 1_000_000})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    states: dict[str, TaskState] = {}
    seen, last_commit, cpu0 = 0, time.monotonic(), 0.0
    try:
        while seen < events:
            batch = [m for m in consumer.consume(batch_max, 1.0) if not m.error()]
            if not batch:
                continue
            if not seen:
                cpu0 = time.process_time()
            seen += len(batch)
            outcome = fold_batch(codec, [(m.key(), m.value(), m.partition()) for m in batch],
                                 states.get)
            for changed in outcome.changed:
                states[changed.task_id] = changed.state
                while True:
                    try:
                        producer.produce(out, key=changed.task_id, value=changed.document,
                                         partition=changed.partition)
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.poll(0)
            if time.monotonic() - last_commit > 2.8 or seen >= events:
                producer.flush(60)
                consumer.commit(asynchronous=False)
                last_commit = time.monotonic()
        cpu = time.process_time() - cpu0
    finally:
        consumer.close()
        producer.flush(60)
    first, last, count = output_span(kafka, out)
    return {"events": events, "seconds": last - first, "events_per_s": events / (last - first),
            "cpu_us_per_event": cpu / events * 1e6, "state_records": count}


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--in-flight", type=int, default=10_000,
                        help="tasks whose events are interleaved at a time")
    parser.add_argument("--only", choices=["faust", "plain"])
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="PROCESSORS_X=V", help="a setting for the Faust app (repeatable)")
    parser.add_argument("--profile", help="run the Faust app under cProfile, stats to this file")
    parser.add_argument("--app-module", default="processors.cli",
                        help="the Faust app's entry point (python -m MODULE), e.g. an instrumented copy")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.overrides)
    events = args.events // EVENTS_PER_TASK * EVENTS_PER_TASK
    report: dict = {"events": events, "partitions": PARTITIONS, "in_flight": args.in_flight,
                    "python": platform.python_version(), "cpus": os.cpu_count(),
                    "overrides": overrides, "started": datetime.now(UTC).isoformat(),
                    "load_average": [round(os.getloadavg()[0], 2)], "before": machine_state()}
    t0 = time.perf_counter()
    encoded = cached_events(events, args.in_flight)
    report["encode_s"] = round(time.perf_counter() - t0, 1)
    with ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            from devstack.kafka import KafkaBroker

            broker = KafkaBroker()
            stack.callback(broker.stop)
            broker.start()
            bootstrap = broker.bootstrap_servers

        def fresh_topics() -> KafkaSettings:  # each run reads its own copy, writes its own state
            kafka = KafkaSettings(bootstrap_servers=bootstrap, partitions=PARTITIONS,
                                  topic_prefix=f"benchfold-{uuid.uuid4().hex[:8]}")
            ensure_topics(kafka)
            report.setdefault("produce_s", []).append(round(produce_events(kafka, encoded), 1))
            return kafka

        if args.only != "plain":
            kafka = fresh_topics()
            datadir = Path(os.environ.get("TMPDIR", "/tmp")) / f"{kafka.topic_prefix}-faust"
            datadir.mkdir(parents=True, exist_ok=True)
            report["faust"] = run_faust(kafka, events, overrides, datadir, args.profile,
                                       args.app_module)
            print("faust:", report["faust"], file=sys.stderr)
        if args.only != "faust":
            batch_max = int(overrides.get("PROCESSORS_BATCH_MAX", 2000))
            report["plain"] = run_plain(fresh_topics(), events, batch_max)
            print("plain:", report["plain"], file=sys.stderr)
        report["load_average"].append(round(os.getloadavg()[0], 2))
        report["after"] = machine_state()
        report["machine_cpu"] = cpu_between(report["before"], report["after"])
        if "faust" in report and "plain" in report:
            report["ratio"] = report["faust"]["events_per_s"] / report["plain"]["events_per_s"]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name in ("faust", "plain"):
            if name in report:
                r = report[name]
                print(f"{name:6s} {r['events_per_s']:>10,.0f} events/s  ({r['events']:,} events in "
                      f"{r['seconds']:.1f} s, {r['cpu_us_per_event']:.0f} us CPU per event, "
                      f"{r['state_records']:,} state records)")
        if "ratio" in report:
            print(f"ratio  {report['ratio']:.2f} (faust / plain)")
        print(describe(report["before"], report["after"]))


if __name__ == "__main__":
    main()
