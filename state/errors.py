"""Errors of the task lifecycle (``state/lifecycle.py``).

All derive from :class:`LifecycleError`, itself a :class:`schemas.errors.ComputeError`. Each says
what failed and what the caller should do.
"""

from __future__ import annotations

from collections.abc import Iterable

from schemas.errors import ComputeError


class LifecycleError(ComputeError):
    """A task's lifecycle rules were broken (an illegal move or a malformed status event)."""


class IllegalTransition(LifecycleError):
    """Someone tried to move a task between two statuses the transition table does not link.

    Nothing was emitted. Emit only moves listed in ``state.lifecycle.ALLOWED``; a task that needs
    to run again gets a new attempt (see :class:`IllegalNewAttempt`), never a backwards move.
    """

    def __init__(self, current: object, new: object, allowed: Iterable[object]) -> None:
        self.current = current
        self.new = new
        names = sorted(str(getattr(s, "value", s)) for s in allowed)
        where = ", ".join(names) if names else "nothing (it is terminal)"
        cur = getattr(current, "value", current)
        nxt = getattr(new, "value", new)
        super().__init__(
            f"illegal task transition {cur} -> {nxt}: from {cur} a task may move to {where}; "
            "emit one of those, or start a new attempt if the task must run again"
        )


class IllegalNewAttempt(LifecycleError):
    """A new attempt was requested for a task that may not start one.

    Only a PROCESSING task starts attempt ``n + 1`` (a retry of the attempt that just failed or
    whose lease ran out), with QUEUED; FAILED, COMPLETED and CANCELLED are final. Do not emit the
    new attempt.
    """

    def __init__(
        self, task_id: str, status: object, attempt: int, requested: int, why: str
    ) -> None:
        self.task_id = task_id
        self.status = status
        self.attempt = attempt
        self.requested = requested
        st = getattr(status, "value", status)
        super().__init__(
            f"task {task_id}: cannot start attempt {requested} while attempt {attempt} is {st}: "
            f"{why}"
        )


class InvalidStatusEvent(LifecycleError):
    """A status event lacks a field the fold needs or carries an out-of-range value.

    The event is not folded; send the record to the dead-letter topic and fix its producer.
    """


class TaskIdMismatch(LifecycleError):
    """An event for one task was folded into the state of another.

    A programming error in the caller: key the state by the event's task id.
    """
