"""The takeover check's decision: only a read that found no final status runs a taken-over
record; a check that could not read waits (issue 15, item 4: a failed read was taken for
"not ended" and a finished task ran again). Pure: no broker."""

from __future__ import annotations

from gpu_consumers.takeover import (
    RECHECK_MAX_S,
    Answer,
    Check,
    Step,
    recheck_delay,
    step_for,
)


def test_only_a_complete_read_without_a_final_status_runs_the_task():
    assert step_for(Check(Answer.NOT_ENDED)) is Step.RUN


def test_a_check_that_could_not_read_waits_instead_of_running_the_task():
    check = Check(Answer.UNKNOWN, error="FENCED_LEADER_EPOCH")
    assert step_for(check) is Step.WAIT


def test_a_final_status_on_the_topic_commits_without_running():
    assert step_for(Check(Answer.ENDED)) is Step.SKIP


def test_rechecks_back_off_and_are_bounded():
    delays = [recheck_delay(n) for n in range(1, 10)]
    assert delays == sorted(delays)
    assert delays[0] < delays[2]
    assert max(delays) == RECHECK_MAX_S
    assert recheck_delay(1, first_s=1.0, max_s=3.0) == 1.0
    assert recheck_delay(5, first_s=1.0, max_s=3.0) == 3.0
