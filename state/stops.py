"""The poison-task rule: a task that stopped a worker twice is not handed to a third one. Pure.

A *worker stop* is an attempt that ended because the process running it was killed or vanished,
not because the handler reported a failure:

* a **hard stop** by the worker's supervisor: the handler's child process was killed after the
  attempt's time limit (plus grace), or for crossing the memory ceiling, or it died on its own
  (a segfault, ``terminate called without an active exception``). The worker reports the
  attempt's end with the event id :func:`worker_stop_event_id`;
* a **lease time-out**: no report from the worker for the type's lease, so the worker process
  (or its machine) is gone. The processors report it with
  ``lease_event_id(task, attempt, "timeout")``.

The report is the attempt's FAILED when the task ends there, or the next attempt's QUEUED (with
the stop's error) when it is retried (docs/WORKERS.md, "Retries"). Both ids are deterministic
(UUIDv5) and name the attempt that stopped, so :func:`stopped_attempt` recognises a worker stop
from the status event alone and the lifecycle fold can keep the set of stopped attempts of a task
(``TaskState.stopped_attempts``) without any new field on the wire. Whoever decides after a
worker stop calls :func:`decide_after_stop`: the second stop ends the task FAILED with
PROVIDER_ERROR and the reason ``the task stopped a worker twice: ...``; before that the one retry
policy (:func:`state.retry.decide`) applies as for any failure.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from schemas.enums import ErrorCode, TaskStatus
from state.retry import Action, RetryDecision, RetryPolicy, decide

__all__ = [
    "LEASE_NAMESPACE", "STOPS_HEADER", "STOPS_TO_FAIL", "StopDecision", "decide_after_stop",
    "is_stop_event", "lease_event_id", "stopped_attempt", "stops_from_header",
    "worker_stop_event_id",
]

# Fixed: changing it changes every lease event id, and repeats would stop being duplicates.
LEASE_NAMESPACE = uuid.UUID("0d6c2a0e-51a7-4c36-9a8e-3f0b2c7d4e19")
# Two: one stop may be bad luck (a node lost, a neighbour's memory spike); a second on another
# attempt means the task itself takes workers down, and a third worker would go the same way.
STOPS_TO_FAIL = 2
# Kafka header of a task record: how many earlier attempts of the task stopped a worker. Set by
# whoever produces attempt n + 1 (the lease retry, a worker's hand-back), read by the worker that
# runs it, so that its own hard stop can apply the rule without reading the status history.
STOPS_HEADER = "compute-worker-stops"


def lease_event_id(task_id: str, attempt: int, step: str) -> str:
    """The event id of a lease output: ``step`` is "timeout", "retry" (the resubmitted task
    record) or "queued"."""
    return str(uuid.uuid5(LEASE_NAMESPACE, f"{task_id}/{attempt}/{step}"))


def worker_stop_event_id(task_id: str, attempt: int) -> str:
    """The event id of the FAILED a worker emits for an attempt it had to stop by force."""
    return lease_event_id(task_id, attempt, "worker-stop")


def _stop_ids(task_id: str, attempt: int) -> tuple[str, str]:
    return worker_stop_event_id(task_id, attempt), lease_event_id(task_id, attempt, "timeout")


def stopped_attempt(task_id: str, attempt: int, status: TaskStatus, event_id: str) -> int | None:
    """The attempt this status event says a worker stop ended, or None.

    A stop that ends the task is that attempt's FAILED; a stop that is retried is the QUEUED of
    the *next* attempt (``attempt - 1`` stopped), carrying the stopped attempt's event id: the
    id names the attempt that stopped, whichever status reports it."""
    if status is TaskStatus.FAILED and event_id in _stop_ids(task_id, attempt):
        return attempt
    if status is TaskStatus.QUEUED and attempt > 1 and event_id in _stop_ids(task_id, attempt - 1):
        return attempt - 1
    return None


def is_stop_event(task_id: str, attempt: int, status: TaskStatus, event_id: str) -> bool:
    """Is this status event the end of an attempt by a worker stop (hard stop or lease)?"""
    return stopped_attempt(task_id, attempt, status, event_id) is not None


def stops_from_header(value: str | None) -> int:
    """The :data:`STOPS_HEADER` value of a task record; 0 when absent or unreadable (a bad
    header must not fail the task: at worst the rule needs one stop more)."""
    try:
        return max(int(value), 0) if value else 0
    except ValueError:
        return 0


@dataclass(frozen=True)
class StopDecision:
    """What a worker stop ends as: the code of the attempt's FAILED and the retry decision."""

    code: ErrorCode
    decision: RetryDecision
    poisoned: bool  # the rule ended the task

    def message(self, what: str) -> str:
        """The FAILED event's message for an attempt that ended with ``what``."""
        return f"the task stopped a worker twice: {what}" if self.poisoned else what


def decide_after_stop(code: ErrorCode, attempt: int, stops: int, policy: RetryPolicy, *,
                      seed: object | None = None) -> StopDecision:
    """After attempt ``attempt`` ended by a worker stop that would be reported as ``code``;
    ``stops`` counts the task's worker stops *including* this one."""
    if stops < 1:
        raise ValueError(f"stops counts this stop too: must be >= 1, got {stops}")
    if stops >= STOPS_TO_FAIL:
        reason = (f"attempt {attempt} stopped a worker after {stops - 1} earlier stop(s); the "
                  f"task is not handed to another")
        return StopDecision(ErrorCode.PROVIDER_ERROR, RetryDecision(Action.FAIL, reason), True)
    return StopDecision(code, decide(code, attempt, policy, seed=seed), False)
