"""The fault suite's scenarios: each runs a load of tasks through the API while it injects one
fault, and returns the faults it injected (start and end) for the checker.

Every scenario gets a :class:`Plan` (how many tasks, over how long, how long the fault lasts: the
short form in ``make test`` uses small numbers) and the running :class:`bench.faults.suite.System`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.faults.harness import WORKERS, worker_spec
from bench.faults.history import Fault, Submit
from gpu_consumers.fault_points import POINTS

if TYPE_CHECKING:
    from bench.faults.suite import System


@dataclass(frozen=True)
class Plan:
    tasks: int = 60  # submitted over load_s seconds
    load_s: float = 30.0
    fault_at_s: float = 8.0  # the fault begins this long after the load
    freeze_s: float = 60.0  # a broker frozen this long
    down_s: float = 5.0  # a killed broker or PostgreSQL stays down this long
    storm_s: float = 60.0  # members come and go for this long
    storm_period_s: float = 4.0
    tail_s: float = 10.0  # the load goes on this long after a fault ends: progress to measure


@dataclass
class Outcome:
    submits: list[Submit]
    faults: list[Fault]
    progress: str = "topic"  # which signal shows progress: "topic" or "read_model"
    notes: list[str] | None = None


Scenario = Callable[["System", Plan], Outcome]


def under_load(system: System, plan: Plan, tag: str, fault: Callable[[], list[Fault]],
               tasks: int | None = None, load_s: float | None = None) -> tuple[list[Submit], list[Fault]]:
    """Run the load in a thread; ``fault_at_s`` into it, inject the fault (in this thread: a
    restarted server's parent-death signal is tied to the thread that spawns it)."""
    result: list[Submit] = []
    ended: list[float] = []  # the load goes on tail_s past the last fault's end

    def done() -> bool:
        return bool(ended) and time.time() >= ended[0] + plan.tail_s

    load = threading.Thread(target=lambda: result.extend(
        system.load.run(tag, tasks or plan.tasks, load_s or plan.load_s, until=done)),
        name=f"load-{tag}")
    load.start()
    faults: list[Fault] = []
    try:
        time.sleep(plan.fault_at_s)  # the fault lands in the middle of the load, by design
        faults = fault()
    finally:  # also when the fault failed: the load stops tail_s from now
        ended.append(max((f.ended_at for f in faults), default=time.time()))
    load.join()
    return result, faults


def _service_kill(name: str, progress: str = "topic") -> Scenario:
    def run(system: System, plan: Plan) -> Outcome:
        def fault() -> list[Fault]:
            at = system.services.kill(name)
            death = system.services.wait_restarted(name, at)
            return [Fault(f"{name} SIGKILL", at, death.restarted_at or at)]

        submits, faults = under_load(system, plan, f"kill-{name}", fault)
        return Outcome(submits, faults, progress)

    return run


def worker_fault_point(point: str) -> Scenario:
    """worker-1 restarted with the fault point armed: it SIGKILLs itself at ``point`` of its
    second task there; the suite restarts it without (as its supervisor would)."""
    name = WORKERS[0]

    def run(system: System, plan: Plan) -> Outcome:
        services = system.services
        services.stop(name)
        since = services.log_size(name)
        services.start(name, {"WORKER_FAULT_POINT": point, "WORKER_FAULT_AFTER": "1"})
        armed_at = time.time()
        # Load only once it has partitions: else the other worker may run every task.
        services.wait_assigned(name, since)
        plan_now = Plan(**{**plan.__dict__, "fault_at_s": 0.0})

        def fault() -> list[Fault]:
            try:
                death = services.wait_restarted(name, armed_at, timeout=plan.load_s + 60)
            except TimeoutError:
                return []
            return [Fault(f"worker SIGKILL at {point}", death.died_at, death.restarted_at or death.died_at)]

        submits, faults = under_load(system, plan_now, f"point-{point}", fault)
        notes = [] if faults else [f"the worker never reached {point}"]
        return Outcome(submits, faults, notes=notes)

    return run


def broker_freeze(system: System, plan: Plan) -> Outcome:
    def fault() -> list[Fault]:
        start = time.time()
        system.stack.freeze_broker(1)
        try:
            time.sleep(plan.freeze_s)  # the fault's length is the scenario's parameter
        finally:
            system.stack.thaw_broker(1)
        return [Fault(f"broker SIGSTOP {plan.freeze_s:g} s", start, time.time())]

    submits, faults = under_load(system, plan, "broker-freeze", fault,
                                 load_s=max(plan.load_s, plan.fault_at_s + plan.freeze_s + plan.tail_s))
    return Outcome(submits, faults)


def _broker_kill(node: int) -> Scenario:
    def run(system: System, plan: Plan) -> Outcome:
        def fault() -> list[Fault]:
            start = time.time()
            system.stack.stop_broker(node, kill=True)
            time.sleep(plan.down_s)  # how long the broker stays down
            system.stack.start_broker(node)
            return [Fault(f"broker {node} SIGKILL + restart", start, time.time(), kind="broker")]

        submits, faults = under_load(system, plan, f"broker-kill-{node}", fault,
                                     load_s=max(plan.load_s, plan.fault_at_s + plan.down_s + plan.tail_s))
        return Outcome(submits, faults)

    return run


def postgres_restart(system: System, plan: Plan) -> Outcome:
    def fault() -> list[Fault]:
        start = time.time()
        system.stack.restart_postgres()
        return [Fault("PostgreSQL restart", start, time.time())]

    submits, faults = under_load(system, plan, "postgres-restart", fault)
    return Outcome(submits, faults, "read_model")


def rebalance_storm(system: System, plan: Plan) -> Outcome:
    """Two extra members join and leave (SIGTERM) in turn every ``storm_period_s``."""
    services = system.services
    extra = ["worker-3", "worker-4"]
    for name in extra:
        services.specs[name] = worker_spec(name)

    def fault() -> list[Fault]:
        start, i = time.time(), 0
        while time.time() - start < plan.storm_s:
            name = extra[i % 2]
            if name in services.running:
                services.stop(name)
            else:
                services.start(name)
            i += 1
            time.sleep(plan.storm_period_s)  # the storm's rhythm
        for name in extra:
            services.stop(name)
        return [Fault("rebalance storm", start, time.time())]

    submits, faults = under_load(system, plan, "rebalance-storm", fault,
                                 load_s=max(plan.load_s, plan.fault_at_s + plan.storm_s + plan.tail_s),
                                 tasks=max(plan.tasks, int(plan.tasks * plan.storm_s / plan.load_s)))
    return Outcome(submits, faults)


def cancel_races(system: System, plan: Plan) -> Outcome:
    """Each task cancelled through the API 0-1.5 s after its acknowledgement: while queued, as
    it is taken, while it runs, as it completes."""
    rng = random.Random(15)
    submits: list[Submit] = []
    timers: list[threading.Timer] = []
    for _ in range(plan.tasks):
        sub = system.load.submit_one("cancel-race")
        submits.append(sub)
        if sub.task_id:
            t = threading.Timer(rng.uniform(0.0, 1.5), system.load.cancel, args=(sub.task_id,))
            t.start()
            timers.append(t)
        time.sleep(plan.load_s / plan.tasks)  # pacing the load
    for t in timers:
        t.join()
    return Outcome(submits, [])


def broker_of_three(system: System, plan: Plan) -> Outcome:
    return _broker_kill(2)(system, plan)


SCENARIOS: dict[str, Scenario] = {
    **{f"worker-kill-{p.replace('_', '-')}": worker_fault_point(p) for p in POINTS},
    "processors-kill": _service_kill("processors"),
    "projector-kill": _service_kill("projector", "read_model"),
    "broker-freeze": broker_freeze,
    "broker-kill": _broker_kill(1),
    "broker-of-three": broker_of_three,  # --brokers 3 only
    "postgres-restart": postgres_restart,
    "rebalance-storm": rebalance_storm,
    "cancel-races": cancel_races,
}
SHORT = ["worker-kill-mid-run", "worker-kill-after-terminal", "projector-kill", "broker-kill",
         "broker-freeze"]
SHORT_PLAN = Plan(tasks=16, load_s=8.0, fault_at_s=3.0, freeze_s=8.0, down_s=2.0, storm_s=15.0,
                  tail_s=5.0)
