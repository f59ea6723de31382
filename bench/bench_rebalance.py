"""Benchmark: a rebalance storm, per consumer-group protocol (issue 15, items 3 and 4).

For each configuration, on one private broker (Kafka 4.1, started here):

* a producer submits no-op IMAGE_ADJUSTER tasks at a steady rate to a 6-partition topic;
* ``--workers`` worker processes serve them (``Worker`` with a handler that returns a 1-pixel PNG
  at once, inline execution: the runtime and Kafka are all that is measured);
* every ``--every`` seconds for ``--storm`` seconds one worker is SIGKILLed and a new one started;
* then the storm stops and the bench waits until every submitted task has a terminal status.

Reported per configuration:

* ``served_again_s``: per kill, from the SIGKILL to the first PROCESSING by another worker of a
  task on each partition the killed worker owned (median and max over the kills' partitions);
* ``reruns_of_finished``: tasks that got a PROCESSING after their COMPLETED (a finished task run
  again: the target is 0); ``reruns_unfinished``: tasks run again because their worker was killed
  mid-task (expected, at-least-once);
* ``throughput``: tasks completed per second during the storm, and the drain time after it;
* ``already_ended``: records skipped by the takeover check (their task had ended).

Configurations: ``classic`` (cooperative-sticky, client session timeout ``--session-ms``),
``consumer-45s`` (KIP-848, the 45 s session both protocols default to) and ``consumer`` (KIP-848,
the workers set the group's ``consumer.session.timeout.ms`` to ``--session-ms``).

    .venv/bin/python bench/bench_rebalance.py [--protocols classic,consumer-45s,consumer] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: E402

from gpu_consumers.takeover import status_partition  # noqa: E402
from schemas.codec import EventCodec  # noqa: E402
from schemas.enums import TaskStatus, TaskType  # noqa: E402
from schemas.events import StatusChanged  # noqa: E402
from schemas.kafka_settings import KafkaSettings  # noqa: E402

TYPE = TaskType.IMAGE_ADJUSTER
PARTITIONS = 6
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- worker process

def _worker_main(args: argparse.Namespace) -> int:
    from gpu_consumers.handlers.base import HandlerResult, OutputFile
    from gpu_consumers.runtime import Worker
    from gpu_consumers.settings import WorkerSettings
    from gpu_consumers.storage import FileStore

    png = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                        "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082")

    class Noop:
        task_type = TYPE
        providers = ("noop",)

        def run(self, params: Any, ctx: Any) -> HandlerResult:
            return HandlerResult(outputs=[OutputFile(png, "image/png", ".png")], model="noop",
                                 provider="noop", width=1, height=1)

    kafka = KafkaSettings(bootstrap_servers=args.bootstrap, topic_prefix=args.prefix,
                          partitions=PARTITIONS)
    protocol = "classic" if args.protocol == "classic" else "consumer"
    session_ms = 45_000 if args.protocol == "consumer-45s" else int(args.session_ms)
    settings = WorkerSettings(types=[TYPE], group_prefix=f"{args.prefix}-workers",
                              execution="inline", device="cpu", group_protocol=protocol,
                              session_timeout_ms=session_ms, progress_interval_s=10.0,
                              rebalance_wait_s=1.0, shutdown_grace_s=2.0,
                              takeover_lookback_s=0.0 if args.no_takeover else 300.0)
    worker = Worker(kafka, settings, {TYPE: {"noop": Noop}}, FileStore(args.results, fsync=False),
                    None, None, worker_id=args.worker_id)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    stop = threading.Event()

    def report_assignment() -> None:  # for the bench: which partitions this worker owns
        out = Path(args.assignment)
        while not stop.wait(0.1):
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps({"owned": [p for _, p in worker.assignment()],
                                       "already_ended": worker.stats.already_ended}))
            tmp.replace(out)

    threading.Thread(target=report_assignment, daemon=True).start()
    worker.run()
    stop.set()
    return 0


# ---------------------------------------------------------------------------- the storm

class Storm:
    def __init__(self, bootstrap: str, protocol: str, args: argparse.Namespace, tmp: Path) -> None:
        self.bootstrap, self.protocol, self.args, self.tmp = bootstrap, protocol, args, tmp
        self.prefix = f"storm{uuid.uuid4().hex[:8]}"
        self.kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=self.prefix,
                                   partitions=PARTITIONS)
        self.procs: dict[str, subprocess.Popen] = {}
        self.kills: list[tuple[str, float, list[int]]] = []  # worker id, wall time, partitions
        self.submitted: dict[str, int] = {}  # task id -> task-topic partition
        self.already_ended = 0

    def start_worker(self) -> str:
        worker_id = f"w-{uuid.uuid4().hex[:6]}"
        cmd = [sys.executable, __file__, "--worker", "--bootstrap", self.bootstrap, "--prefix",
               self.prefix, "--protocol", self.protocol, "--session-ms", str(self.args.session_ms),
               "--worker-id", worker_id, "--results", str(self.tmp / "results"),
               "--assignment", str(self.tmp / f"{worker_id}.json")]
        if self.args.no_takeover:
            cmd.append("--no-takeover")
        log = open(self.tmp / f"{worker_id}.log", "w")  # noqa: SIM115 (the child writes it until it ends)
        self.procs[worker_id] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        return worker_id

    def owned(self, worker_id: str) -> tuple[list[int], int]:
        try:
            data = json.loads((self.tmp / f"{worker_id}.json").read_text())
            return data["owned"], data["already_ended"]
        except (OSError, ValueError):
            return [], 0

    def kill(self, worker_id: str) -> None:
        owned, _ = self.owned(worker_id)
        self.procs[worker_id].send_signal(signal.SIGKILL)
        self.kills.append((worker_id, time.time(), owned))
        self.procs[worker_id].wait(10)

    def run(self) -> dict[str, Any]:
        from producers.submit import TaskProducer
        from schemas.topic_admin import ensure_topics

        ensure_topics(self.kafka)
        stop = threading.Event()
        producer = TaskProducer(self.kafka)
        params = {"base_image_url": "file:///nowhere.png", "brightness": 0.1}

        def submit_loop() -> None:
            interval = 1.0 / self.args.rate
            next_at = time.monotonic()
            while not stop.is_set():
                task_id = producer.submit(TYPE, params)
                self.submitted[task_id] = status_partition(task_id, PARTITIONS)
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
            producer.flush(30)

        for _ in range(self.args.workers):
            self.start_worker()
        time.sleep(5.0)  # the workers start (imports) and join before the tasks flow
        submitter = threading.Thread(target=submit_loop, daemon=True)
        storm_start = time.time()
        submitter.start()
        rng = random.Random(7)
        end = time.monotonic() + self.args.storm
        while time.monotonic() < end:
            time.sleep(self.args.every)
            alive = [w for w, p in self.procs.items() if p.poll() is None]
            victim = rng.choice(alive)
            self.kill(victim)
            self.start_worker()
        stop.set()
        submitter.join()
        storm_end = time.time()
        events = self._wait_all_terminal(timeout_s=self.args.drain_timeout)
        drained = time.time()
        for worker_id, proc in self.procs.items():
            if proc.poll() is None:
                self.already_ended += self.owned(worker_id)[1]
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        return self._report(events, storm_start, storm_end, drained)

    def _wait_all_terminal(self, timeout_s: float) -> dict[str, list[StatusChanged]]:
        codec, topic = EventCodec(), self.kafka.topics.status
        consumer = Consumer({**self.kafka.client_config(), "group.id": f"bench-{uuid.uuid4().hex}",
                             "enable.auto.commit": False})
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        events: dict[str, list[StatusChanged]] = defaultdict(list)
        done: set[str] = set()
        deadline = time.monotonic() + timeout_s
        quiet_until = None
        try:
            while time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    if len(done) >= len(self.submitted):
                        # everything ended: read a little longer for late reruns' statuses
                        quiet_until = quiet_until or time.monotonic() + 3.0
                        if time.monotonic() > quiet_until:
                            break
                    continue
                event = codec.decode(msg.value(), expect=StatusChanged)
                events[event.envelope.task_id].append(event)
                if event.status.is_terminal:
                    done.add(event.envelope.task_id)
        finally:
            consumer.close()
        return events

    def _report(self, events: dict[str, list[StatusChanged]], storm_start: float,
                storm_end: float, drained: float) -> dict[str, Any]:
        finished_rerun = unfinished_rerun = completed_in_storm = 0
        for task_id in self.submitted:
            evs = events.get(task_id, [])
            completed_seen = False
            starts = 0
            rerun_after_end = False
            for e in evs:
                if e.status is TaskStatus.PROCESSING and (e.progress or 0) == 0:
                    starts += 1
                    if completed_seen:
                        rerun_after_end = True
                if e.status is TaskStatus.COMPLETED:
                    if completed_seen:
                        rerun_after_end = True
                    completed_seen = True
                    if e.envelope.occurred_at.timestamp() <= storm_end:
                        completed_in_storm += 1
            if rerun_after_end:
                finished_rerun += 1
            elif starts > 1:
                unfinished_rerun += 1
        # First PROCESSING per task-topic partition, per worker, in time order.
        starts_by_partition: dict[int, list[tuple[float, str]]] = defaultdict(list)
        for task_id, partition in self.submitted.items():
            for e in events.get(task_id, []):
                if e.status is TaskStatus.PROCESSING and (e.progress or 0) == 0:
                    starts_by_partition[partition].append(
                        (e.envelope.occurred_at.timestamp(), e.worker_id or ""))
        for lst in starts_by_partition.values():
            lst.sort()
        gaps = []
        for victim, killed_at, owned in self.kills:
            for p in owned:
                later = [t for t, w in starts_by_partition[p] if t > killed_at and w != victim]
                if later:
                    gaps.append(later[0] - killed_at)
        lost = [t for t in self.submitted if not any(e.status.is_terminal for e in events.get(t, []))]
        return {
            "protocol": self.protocol,
            "tasks": len(self.submitted),
            "kills": len(self.kills),
            "kills_owning_partitions": sum(1 for _, _, o in self.kills if o),
            "served_again_s": {
                "median": round(statistics.median(gaps), 2) if gaps else None,
                "max": round(max(gaps), 2) if gaps else None, "n": len(gaps)},
            "reruns_of_finished": finished_rerun,
            "reruns_unfinished": unfinished_rerun,
            "already_ended_skipped": self.already_ended,
            "completed_per_s_in_storm": round(completed_in_storm / (storm_end - storm_start), 1),
            "drain_s_after_storm": round(drained - storm_end, 1),
            "not_terminal": len(lost),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocols", default="classic,consumer-45s,consumer")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rate", type=float, default=40.0, help="tasks submitted per second")
    parser.add_argument("--storm", type=float, default=60.0, help="seconds of kills and starts")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between kills")
    parser.add_argument("--session-ms", type=int, default=10_000)
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--no-takeover", action="store_true",
                        help="workers skip the takeover check (to measure what it saves)")
    parser.add_argument("--json", action="store_true")
    # worker mode (a child of the bench)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--bootstrap", "--prefix", "--protocol", "--worker-id", "--results", "--assignment"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker_main(args)

    from devstack.kafka import KafkaBroker

    # The KIP-848 group session may go down to --session-ms (the broker's floor is 45 s).
    broker = KafkaBroker(extra_props={
        "group.consumer.min.session.timeout.ms": str(min(args.session_ms, 45_000)),
        "group.consumer.min.heartbeat.interval.ms": "1000"})
    broker.start()
    results = []
    try:
        for protocol in args.protocols.split(","):
            with tempfile.TemporaryDirectory(prefix="bench-rebalance-") as tmp:
                storm = Storm(broker.bootstrap_servers, protocol, args, Path(tmp))
                try:
                    result = storm.run()
                finally:
                    for proc in storm.procs.values():
                        if proc.poll() is None:
                            proc.kill()
                results.append(result)
                if not args.json:
                    print(json.dumps(result), flush=True)
    finally:
        broker.stop()
    out = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
           "rate": args.rate, "storm_s": args.storm, "every_s": args.every,
           "workers": args.workers, "session_ms": args.session_ms, "results": results}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
