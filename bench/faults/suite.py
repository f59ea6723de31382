"""Runs fault-suite scenarios on one private system and prints the table (docs/RELIABILITY.md).

    python bench/faults.py [--brokers 1|3] [--scenario NAME ...] [--short]

Exit status 1 when a scenario broke an invariant or missed a target, 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from bench.faults.checker import Verdict, check
from bench.faults.harness import Load, Services, api_port, image_in, new_state_dir, service_env, standard_specs
from bench.faults.history import History, ReadModelSampler, StatusRecorder
from bench.faults.scenarios import SCENARIOS, SHORT, SHORT_PLAN, Plan
from devstack.procs import tail, wait_until
from devstack.stack import LocalStack
from schemas.kafka_settings import KafkaSettings

log = logging.getLogger("faults")
QUIET_S = 60.0  # after a scenario's load: every task must have ended within this
SHORT_QUIET_S = 45.0


@dataclass
class System:
    stack: LocalStack
    services: Services
    load: Load
    history: History
    kafka: KafkaSettings
    database_url: str
    state_dir: Path
    closers: list = field(default_factory=list)

    @classmethod
    def start(cls, brokers: int = 1) -> System:
        state_dir = new_state_dir()
        # Its own base folder: another stack starting on this machine sweeps the work folders of
        # dead brokers under /tmp, and a broker the suite has killed is one until it restarts.
        stack = LocalStack(brokers=brokers, base_dir=state_dir)
        stack.start(timeout=240)
        system = None
        try:
            env = stack.env()
            # The stack's replication (3/2 on the cluster, 1/1 on one broker), as `computectl up`.
            replication = {f: env[v] for f, v in (("replication_factor", "KAFKA_REPLICATION_FACTOR"),
                                                  ("min_insync_replicas", "KAFKA_MIN_INSYNC_REPLICAS"))
                           if env.get(v)}
            kafka = KafkaSettings(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"], **replication)
            from projection.db.apikeys import create_key
            from projection.db.migrate import migrate
            from schemas.topic_admin import ensure_topics

            ensure_topics(kafka)
            migrate(env["DATABASE_URL"])
            key, _ = create_key(env["DATABASE_URL"], "fault-suite", name="fault suite")
            port = api_port()
            (state_dir / "logs").mkdir(exist_ok=True)
            services = Services(service_env(env, state_dir), state_dir / "logs",
                                standard_specs(port))
            history = History()
            load = Load(f"http://127.0.0.1:{port}", key, image_in(stack.inputs_dir), history)
            system = cls(stack, services, load, history, kafka, env["DATABASE_URL"], state_dir)
            for name in services.specs:
                services.start(name)
            recorder = StatusRecorder(kafka, history).start()
            sampler = ReadModelSampler(env["DATABASE_URL"], history).start()
            system.closers = [sampler.stop, recorder.stop, load.close, services.close]
            system.warm_up()
            return system
        except BaseException:
            if system is not None:
                system.close()
            else:
                stack.stop()
            raise

    def warm_up(self, timeout: float = 180.0) -> None:
        """The API answers and both workers have run a task (their handler processes started)."""
        import httpx

        url = str(self.load.client.base_url)

        def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            return False

        if not wait_until(ready, timeout, interval=0.25):
            raise RuntimeError("the API was not ready:\n" + tail(self.state_dir / "logs" / "api.log"))
        ids = {s.task_id for s in self.load.run("warm-up", 6, 0.5) if s.task_id}
        if not wait_until(lambda: self.history.final_tasks(ids) == ids, timeout, interval=0.25):
            raise RuntimeError("the warm-up tasks did not end:\n"
                               + tail(self.state_dir / "logs" / "worker-1.log"))

    def quiet(self, ids: set[str], timeout: float) -> None:
        """Wait (up to ``timeout``) until every task in ``ids`` has a final status on the topic
        and a terminal row in the read model."""
        deadline = time.monotonic() + timeout
        wait_until(lambda: self.history.final_tasks(ids) == ids, timeout, interval=0.25)
        wait_until(lambda: self._projected(ids), max(1.0, deadline - time.monotonic()), interval=0.5)

    def _projected(self, ids: set[str]) -> bool:
        return not self.unprojected(ids)

    def unprojected(self, ids: set[str]) -> set[str]:
        """The tasks of ``ids`` with no terminal row in the read model (all, if it does not
        answer)."""
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.database_url) as conn:
            ended = {str(r[0]) for r in conn.execute(
                "SELECT task_id FROM tasks WHERE task_id = ANY(%s) AND status IN "
                "('COMPLETED', 'FAILED', 'CANCELLED')", (list(ids),)).fetchall()}
            return ids - ended
        return set(ids)

    def read_model_mismatches(self, ids: set[str], timeout: float = 60.0) -> set[str]:
        """Task ids whose live read-model row differs from a rebuild from the topics; waits
        (up to ``timeout``) for the projector to catch up with the topics first."""
        from projection.rebuild import rebuild

        def rows(url: str) -> dict[str, tuple]:
            with psycopg.connect(url) as conn:
                return {str(r[0]): tuple(r) for r in conn.execute(
                    "SELECT * FROM tasks WHERE task_id = ANY(%s)", (list(ids),)).fetchall()}

        final = self.history.final_tasks(ids)

        def caught_up() -> bool:
            with contextlib.suppress(psycopg.Error), psycopg.connect(self.database_url) as conn:
                ended = {str(r[0]) for r in conn.execute(
                    "SELECT task_id FROM tasks WHERE task_id = ANY(%s) AND status IN "
                    "('COMPLETED', 'FAILED', 'CANCELLED')", (list(final),)).fetchall()}
                return ended == final
            return False

        wait_until(caught_up, timeout, interval=0.5)
        name = f"rebuild_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            rebuilt_url = make_conninfo(self.database_url, dbname=name)
            rebuild(rebuilt_url, self.kafka, timeout_s=300)
            live, rebuilt = rows(self.database_url), rows(rebuilt_url)
        finally:
            with psycopg.connect(self.database_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return {t for t in ids if live.get(t) != rebuilt.get(t)}

    def close(self, keep_logs: Path | None = None) -> None:
        for close in self.closers:
            with contextlib.suppress(Exception):
                close()
        self.stack.stop()
        if keep_logs is not None:
            shutil.copytree(self.state_dir / "logs", keep_logs, dirs_exist_ok=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def run_suite(names: list[str], plan: Plan, *, brokers: int = 1, quiet_s: float = QUIET_S,
              out=sys.stdout, keep_logs: Path | None = None) -> list[Verdict]:
    system = System.start(brokers)
    verdicts: list[Verdict] = []
    scenario_ids: dict[str, set[str]] = {}
    try:
        for name in names:
            t0 = time.monotonic()
            print(f"[faults] {name} ...", file=out, flush=True)
            outcome = SCENARIOS[name](system, plan)
            ids = {s.task_id for s in outcome.submits if s.acked}
            system.quiet(ids, quiet_s)
            verdict = check(name, system.history, ids, outcome.faults, progress=outcome.progress)
            # Ended on the topic but not in the read model after the quiet period: stuck too
            # (a stalled projector), beside the tasks stuck on the topic.
            behind = system.unprojected(system.history.final_tasks(ids))
            verdict.stuck += len(behind)
            if behind:
                verdict.notes.append(f"{len(behind)} tasks ended on the topic but not in the "
                                     f"read model after {quiet_s:g} s")
            verdict.notes += outcome.notes or []
            unacked = sum(1 for s in outcome.submits if not s.acked)
            if unacked:
                first = next(s for s in outcome.submits if not s.acked)
                verdict.notes.append(f"{unacked} submits not acknowledged (first: "
                                     f"{first.http_status} {first.error})")
            verdicts.append(verdict)
            scenario_ids[name] = ids
            print(f"[faults] {name}: {time.monotonic() - t0:.0f} s\n{table([verdict], head=False)}",
                  file=out, flush=True)
        every = set().union(*scenario_ids.values()) if scenario_ids else set()
        differing = system.read_model_mismatches(every)
        for verdict in verdicts:
            verdict.mismatches = len(differing & scenario_ids[verdict.scenario])
    finally:
        system.close(keep_logs)
    return verdicts


def table(verdicts: list[Verdict], head: bool = True) -> str:
    """The markdown table of docs/RELIABILITY.md (rm-mism is known only after the last scenario)."""
    names = ("scenario", "tasks", "lost", "dup", "regr", "stuck", "rm-mism", "resumed s", "reruns",
             "result")
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)] if head else []
    for v in verdicts:
        resumed = ", ".join("-" if s is None else f"{s:.1f}" for s in v.resumed_s) or "n/a"
        bad = v.violations()
        lines.append("| " + " | ".join(str(x) for x in (
            v.scenario, v.tasks, v.lost, v.duplicates, v.regressions, v.stuck, v.mismatches,
            resumed, v.reruns, "MISS: " + "; ".join(bad) if bad else "ok")) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/faults.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", type=int, choices=(1, 3), default=1)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="run only these (repeatable); default: all that fit --brokers")
    parser.add_argument("--short", action="store_true",
                        help="the short form of make test: few tasks, short faults")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR",
                        help="copy the services' logs here at the end")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if args.scenario:
        names = args.scenario
    elif args.short:
        names = SHORT
    else:
        names = [n for n in SCENARIOS if args.brokers == 3 or n != "broker-of-three"]
    if "broker-of-three" in names and args.brokers != 3:
        parser.error("broker-of-three needs --brokers 3")
    plan = SHORT_PLAN if args.short else Plan()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.monotonic()
    verdicts = run_suite(names, plan, brokers=args.brokers,
                         quiet_s=SHORT_QUIET_S if args.short else QUIET_S, keep_logs=args.keep_logs)
    print(f"\nfault suite, {args.brokers} broker(s), started {started}, "
          f"{time.monotonic() - t0:.0f} s\n")
    print(table(verdicts))
    for v in verdicts:
        for note in v.notes:
            print(f"  {v.scenario}: {note}")
    return 1 if any(v.violations() for v in verdicts) else 0
