"""The fault suite's checker on hand-made histories: each broken invariant is detected, and a
clean history passes."""

from __future__ import annotations

import itertools

from bench.faults.checker import BROKER_RESUME_TARGET_S, check
from bench.faults.history import Fault, History, StatusEvent
from schemas.enums import TaskStatus as S

_offsets = itertools.count()


def ev(task: str, status: S, attempt: int = 1, at: float = 100.0, *,
       retryable: bool | None = None, event_id: str | None = None) -> StatusEvent:
    offset = next(_offsets)
    return StatusEvent(task, attempt, status, at, retryable, event_id or f"e{offset}",
                       offset=offset)


def history(*events: StatusEvent) -> History:
    h = History()
    for e in events:
        h.add_event(e)
    return h


def clean(task: str, at: float = 100.0) -> list[StatusEvent]:
    return [ev(task, S.PENDING, at=at), ev(task, S.QUEUED, at=at),
            ev(task, S.PROCESSING, at=at + 1), ev(task, S.COMPLETED, at=at + 2)]


def test_a_clean_history_passes_even_with_the_apis_queued_after_processing() -> None:
    racing = [ev("b", S.PROCESSING), ev("b", S.PENDING), ev("b", S.QUEUED), ev("b", S.COMPLETED)]
    retried = [ev("c", S.PROCESSING), ev("c", S.QUEUED, attempt=2, retryable=True),
               ev("c", S.PROCESSING, attempt=2), ev("c", S.COMPLETED, attempt=2)]
    v = check("clean", history(*clean("a"), *racing, *retried), {"a", "b", "c"}, [])
    assert (v.lost, v.duplicates, v.regressions, v.stuck, v.reruns) == (0, 0, 0, 0, 0)
    assert v.violations() == []


def test_a_lost_task_is_detected() -> None:
    v = check("lost", history(*clean("a")), {"a", "never-seen"}, [])
    assert v.lost == 1 and v.violations() == ["1 lost"]


def test_a_duplicate_terminal_status_is_detected_once_per_extra_event() -> None:
    events = [*clean("a"), ev("a", S.CANCELLED)]
    read_twice = clean("b")
    v = check("dup", history(*events, *read_twice, read_twice[-1]), {"a", "b"}, [])
    assert v.duplicates == 1  # b's COMPLETED read twice is one event, not a duplicate


def test_a_rerun_of_a_finished_task_counts_as_a_rerun_and_its_second_end_as_a_duplicate() -> None:
    events = [*clean("a"), ev("a", S.PROCESSING), ev("a", S.PROCESSING), ev("a", S.COMPLETED)]
    v = check("rerun", history(*events), {"a"}, [])
    assert (v.reruns, v.duplicates) == (1, 1)


def test_regressions_are_detected_in_the_read_model_and_on_the_wire() -> None:
    h = history(ev("a", S.PROCESSING, attempt=2), ev("a", S.PROCESSING, attempt=1),
                ev("a", S.COMPLETED, attempt=2))
    h.add_regression("b")  # the sampler saw b's row go back
    h.add_regression("elsewhere")  # another scenario's task: not counted here
    v = check("regr", h, {"a", "b"}, [])
    assert v.regressions == 2
    assert "2 status regressions" in v.violations()


def test_a_task_whose_last_attempt_never_ends_is_stuck() -> None:
    events = [ev("a", S.PROCESSING), ev("a", S.QUEUED, attempt=2, retryable=True),  # never ran
              ev("b", S.QUEUED), ev("b", S.PROCESSING)]
    v = check("stuck", history(*events), {"a", "b"}, [])
    assert v.stuck == 2 and v.lost == 0


def test_progress_resumed_is_the_first_final_status_after_the_fault_and_judged_on_its_target() -> None:
    events = [*clean("a", at=100.0), *clean("b", at=120.0)]  # b completes at 122
    fault = Fault("broker", 105.0, 110.0, kind="broker")
    v = check("resume", history(*events), {"a", "b"}, [fault])
    assert v.resumed_s == [12.0] and v.targets == [BROKER_RESUME_TARGET_S] and not v.violations()
    slow = check("resume", history(*events), {"a", "b"}, [Fault("worker", 100.0, 110.0)])
    assert slow.violations() == ["progress resumed after 12.0 s (target 10 s)"]
    none = check("resume", history(*clean("a")), {"a"}, [Fault("worker", 200.0, 201.0)])
    assert none.resumed_s == [None] and none.violations()


def test_the_projectors_progress_is_read_from_the_read_model_samples() -> None:
    h = history(*clean("a"))
    for at, rows in ((100.0, 3), (104.0, 3), (106.0, 3), (109.0, 5)):
        h.add_sample(at, rows)
    v = check("projector", h, {"a"}, [Fault("projector", 102.0, 105.0)], progress="read_model")
    assert v.resumed_s == [4.0]
