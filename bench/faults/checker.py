"""The fault suite's checker: invariants and targets judged on a recorded history.

For the tasks a scenario submitted and the broker acknowledged:

- **lost**: never seen on the status topic at all;
- **stuck**: seen, but its latest attempt has no final status (COMPLETED, FAILED, CANCELLED; a
  retry is QUEUED for the next attempt) once the quiet period is over;
- **duplicate terminal statuses**: more than one terminal status for one attempt of a task
  (distinct events: one event read twice is not a duplicate);
- **regressions**: a task's row in the read model going back between two samples (an older
  attempt, or a lower status within its attempt: what a client polling the API would see), or a
  worker running an older attempt (its PROCESSING) after a newer attempt's events. The API's
  PENDING and QUEUED may reach the topic after the worker's PROCESSING (the submit fast path
  writes them in parallel); the fold absorbs that by design (state/lifecycle.py), so it is none;
- **reruns**: "a finished task ran again", a PROCESSING after a COMPLETED of the same task;
- **read-model mismatches**: tasks whose row in the live read model differs from a rebuild from
  the topics (computed by the harness, passed in);
- **progress resumed**: per fault, seconds from its end to the first final status (or, for the
  projector, the first move of the read model) after it; None when nothing moved.

Targets: progress resumed within 10 s of a fault's end, 30 s after a broker fault.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from bench.faults.history import Fault, History, StatusEvent
from schemas.enums import TaskStatus

RESUME_TARGET_S = 10.0
BROKER_RESUME_TARGET_S = 30.0


@dataclass
class Verdict:
    scenario: str
    tasks: int = 0
    lost: int = 0
    duplicates: int = 0
    regressions: int = 0
    stuck: int = 0
    mismatches: int = 0
    reruns: int = 0
    resumed_s: list[float | None] = field(default_factory=list)
    targets: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def worst_resume(self) -> float | None:
        known = [s for s in self.resumed_s if s is not None]
        return max(known) if known else None

    def violations(self) -> list[str]:
        """Every invariant broken and target missed, in words; empty when the scenario passed."""
        out = [f"{n} {what}" for n, what in ((self.lost, "lost"), (self.duplicates,
               "duplicate terminal statuses"), (self.regressions, "status regressions"),
               (self.stuck, "stuck"), (self.mismatches, "read-model mismatches"),
               (self.reruns, "finished tasks ran again")) if n]
        for resumed, target in zip(self.resumed_s, self.targets):
            if resumed is None:
                out.append(f"no progress after a fault (target {target:g} s)")
            elif resumed > target:
                out.append(f"progress resumed after {resumed:.1f} s (target {target:g} s)")
        return out


def check(scenario: str, history: History, task_ids: set[str], faults: list[Fault] | None = None,
          *, mismatches: int = 0, progress: str = "topic") -> Verdict:
    """Judge the acknowledged submits ``task_ids`` on ``history``. ``progress`` names the signal
    that shows progress after a fault: "topic" (final statuses) or "read_model" (the projector)."""
    events = history.events_of(task_ids)
    verdict = Verdict(scenario, tasks=len(task_ids), mismatches=mismatches)
    by_task: dict[str, list[StatusEvent]] = defaultdict(list)
    seen_ids: set[str] = set()
    for e in sorted(events, key=lambda e: (e.partition, e.offset)):  # one task: one partition
        if e.event_id in seen_ids:
            continue
        seen_ids.add(e.event_id)
        by_task[e.task_id].append(e)
    verdict.lost = len(task_ids - by_task.keys())
    verdict.regressions = sum(history.read_model_regressions.get(t, 0) for t in task_ids)
    for task_events in by_task.values():
        _judge_task(task_events, verdict)
    for fault in history.faults if faults is None else faults:
        verdict.targets.append(BROKER_RESUME_TARGET_S if fault.kind == "broker" else RESUME_TARGET_S)
        verdict.resumed_s.append(resumed_after(fault, history, events, progress))
    return verdict


def _judge_task(events: list[StatusEvent], verdict: Verdict) -> None:
    latest = 0
    terminals: dict[int, int] = defaultdict(int)
    completed = False
    for e in events:
        if e.attempt < latest and e.status is TaskStatus.PROCESSING:
            verdict.regressions += 1
        latest = max(latest, e.attempt)
        if e.status is TaskStatus.PROCESSING and completed:
            verdict.reruns += 1
            completed = False  # one rerun counts once, not once per progress event
        if e.status.is_terminal:
            terminals[e.attempt] += 1
        if e.status is TaskStatus.COMPLETED:
            completed = True
    verdict.duplicates += sum(n - 1 for n in terminals.values() if n > 1)
    if not any(e.final and e.attempt == latest for e in events):
        verdict.stuck += 1


def resumed_after(fault: Fault, history: History, events: list[StatusEvent],
                  progress: str = "topic") -> float | None:
    """Seconds from the fault's end to the first sign of progress after it, None if none."""
    if progress == "read_model":
        before = [n for t, n in history.read_model if t <= fault.ended_at]
        base = before[-1] if before else 0
        moved = [t for t, n in history.read_model if t > fault.ended_at and n > base]
    else:
        moved = [e.occurred_at for e in events if e.final and e.occurred_at > fault.ended_at]
    return round(min(moved) - fault.ended_at, 2) if moved else None
