"""schemas.consumer_health: the progress judge, observation by observation (pure: no broker)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.consumer_health import Action, Observation, Offsets, ProgressWatch, Verdict

A, B = ("status", 0), ("status", 1)
STALL = 30.0


def obs(at: float, offsets: dict | None, assigned: set | None = None, **kw) -> Observation:
    return Observation(at=at, offsets=offsets,
                       assigned=None if assigned is None else frozenset(assigned), **kw)


def test_backlog_counts_from_the_committed_offset_or_the_log_start():
    assert Offsets(committed=5, end=9).backlog == 4
    assert Offsets(committed=None, end=9, start=2).backlog == 7
    assert Offsets(committed=1, end=9, start=4).backlog == 5  # records before start are gone
    assert Offsets(committed=9, end=9).backlog == 0


def test_a_quiet_partition_with_nothing_to_commit_is_never_stalled():
    watch = ProgressWatch(STALL)
    for t in range(0, 600, 5):
        assert watch.observe(obs(t, {A: Offsets(10, 10)}, {A})) == Verdict(True)


def test_committed_offsets_that_keep_moving_are_progress_however_large_the_backlog():
    watch = ProgressWatch(STALL)
    for i, t in enumerate(range(0, 600, 5)):
        assert watch.observe(obs(t, {A: Offsets(100 * i, 10**6)}, {A})).ready


def test_a_backlog_whose_committed_offset_does_not_move_is_a_stall_after_stall_after_s():
    watch = ProgressWatch(STALL)
    assert watch.observe(obs(0, {A: Offsets(5, 9)}, {A})).ready
    assert watch.observe(obs(29.9, {A: Offsets(5, 12)}, {A})).ready
    verdict = watch.observe(obs(30, {A: Offsets(5, 12)}, {A}))
    assert not verdict.ready and verdict.action is Action.RECREATE and verdict.stalled == (A,)
    assert "7 record(s)" in verdict.reason


def test_the_timer_starts_when_the_partition_was_last_seen_caught_up():
    watch = ProgressWatch(STALL)
    watch.observe(obs(0, {A: Offsets(5, 5)}, {A}))
    watch.observe(obs(100, {A: Offsets(5, 5)}, {A}))  # quiet for 100 s
    assert watch.observe(obs(105, {A: Offsets(5, 6)}, {A})).ready  # a record arrived
    assert watch.observe(obs(129, {A: Offsets(5, 6)}, {A})).ready
    assert watch.observe(obs(130, {A: Offsets(5, 6)}, {A})).action is Action.RECREATE


def test_one_stuck_partition_is_a_stall_while_the_others_move():
    """Issue 15 item 2: the processors folded on while one partition's commits had stopped.
    While the member commits elsewhere, the stuck one is judged against the busy grace."""
    watch = ProgressWatch(STALL, busy_grace_s=90)
    for i, t in enumerate(range(0, 95, 5)):
        verdict = watch.observe(obs(t, {A: Offsets(10 * i, 10 * i + 50), B: Offsets(3, 90)}, {A, B}))
        assert verdict.ready == (t < 90), t
    assert verdict.stalled == (B,) and verdict.action is Action.RECREATE
    assert "did not move for 90s" in verdict.reason


def test_a_partition_waiting_its_turn_in_a_backlog_is_not_a_stall():
    """Issue 19's backlog bench: the projector drained 100,000 statuses a fetched chunk of one
    partition at a time; the others waited longer than stall_after_s and it exited."""
    watch = ProgressWatch(STALL)  # busy grace: 6 x 30 s
    assert watch.busy_grace_s == 6 * STALL
    for i, t in enumerate(range(0, 175, 5)):  # A drains; B waits 170 s for its turn
        assert watch.observe(obs(t, {A: Offsets(100 * i, 10**5), B: Offsets(0, 10**5)}, {A, B})).ready
    for i, t in enumerate(range(175, 345, 5)):  # then B drains while A waits
        assert watch.observe(obs(t, {A: Offsets(3400, 10**5), B: Offsets(100 * i, 10**5)}, {A, B})).ready


def test_a_member_that_commits_nowhere_is_stalled_after_stall_after_s_whatever_the_grace():
    watch = ProgressWatch(STALL, busy_grace_s=600)
    watch.observe(obs(0, {A: Offsets(0, 50), B: Offsets(3, 90)}, {A, B}))
    watch.observe(obs(10, {A: Offsets(20, 50), B: Offsets(3, 90)}, {A, B}))  # A moved at 10 s
    assert watch.observe(obs(39, {A: Offsets(20, 50), B: Offsets(3, 90)}, {A, B})).ready
    verdict = watch.observe(obs(40, {A: Offsets(20, 50), B: Offsets(3, 90)}, {A, B}))
    assert verdict.action is Action.RECREATE and verdict.stalled == (A, B)


def test_busy_grace_s_is_at_least_stall_after_s():
    with pytest.raises(ValueError, match="busy_grace_s"):
        ProgressWatch(STALL, busy_grace_s=10)


def test_no_assignment_while_the_topics_have_a_backlog_is_a_stall():
    """Issue 15 item 1: the projector idle in poll(), its group EMPTY, the backlog not moving."""
    watch = ProgressWatch(STALL)
    watch.observe(obs(0, {A: Offsets(5, 9), B: Offsets(0, 0)}, set()))
    verdict = watch.observe(obs(30, {A: Offsets(5, 9), B: Offsets(0, 0)}, set()))
    assert verdict.action is Action.RECREATE and verdict.stalled == (A,)
    assert verdict.reason.startswith("no partition assigned")


def test_no_assignment_is_fine_while_another_member_commits_the_backlog():
    watch = ProgressWatch(STALL)
    for i, t in enumerate(range(0, 120, 5)):
        assert watch.observe(obs(t, {A: Offsets(i, 100)}, set())).ready


def test_only_the_assigned_partitions_are_judged():
    watch = ProgressWatch(STALL)
    for t in range(0, 120, 5):
        assert watch.observe(obs(t, {A: Offsets(0, 0), B: Offsets(0, 50)}, {A})).ready


def test_a_partition_that_comes_back_starts_its_timer_afresh():
    watch = ProgressWatch(STALL)
    watch.observe(obs(0, {A: Offsets(5, 9)}, {A}))
    watch.observe(obs(20, {A: Offsets(5, 9)}, {B}))  # revoked...
    assert watch.observe(obs(40, {A: Offsets(5, 9)}, {A})).ready  # ...and back: 0 s, not 40
    assert watch.observe(obs(70, {A: Offsets(5, 9)}, {A})).action is Action.RECREATE


def test_a_recreate_that_heals_goes_back_to_ready():
    watch = ProgressWatch(STALL)
    watch.observe(obs(0, {A: Offsets(5, 9)}, {A}))
    assert watch.observe(obs(30, {A: Offsets(5, 9)}, {A})).action is Action.RECREATE
    watch.recreated(31)
    verdict = watch.observe(obs(35, {A: Offsets(5, 9)}, set()))  # rejoining
    assert not verdict.ready and verdict.action is Action.NONE and "recreated" in verdict.reason
    assert watch.observe(obs(40, {A: Offsets(9, 9)}, {A})) == Verdict(True)
    # a later stall is a first stall again: recreate, not exit
    watch.observe(obs(45, {A: Offsets(9, 12)}, {A}))
    assert watch.observe(obs(75, {A: Offsets(9, 12)}, {A})).action is Action.RECREATE


def test_a_recreate_that_does_not_heal_ends_in_exit_within_two_stall_periods():
    watch = ProgressWatch(STALL)
    watch.observe(obs(0, {A: Offsets(5, 9)}, {A}))
    watch.observe(obs(30, {A: Offsets(5, 9)}, {A}))
    watch.recreated(30)
    assert watch.observe(obs(59, {A: Offsets(5, 9)}, {A})).action is Action.NONE
    verdict = watch.observe(obs(60, {A: Offsets(5, 9)}, {A}))
    assert verdict.action is Action.EXIT and not verdict.ready


def test_a_stalled_partition_that_went_to_another_member_is_no_longer_this_ones_to_heal():
    watch = ProgressWatch(STALL)
    watch.observe(obs(0, {A: Offsets(5, 9), B: Offsets(0, 0)}, {A, B}))
    watch.observe(obs(30, {A: Offsets(5, 9), B: Offsets(0, 0)}, {A, B}))
    watch.recreated(30)
    assert watch.observe(obs(35, {A: Offsets(5, 9), B: Offsets(0, 0)}, {B})) == Verdict(True)


def test_without_recreate_the_first_stall_exits():
    watch = ProgressWatch(STALL, recreate=False)
    watch.observe(obs(0, {A: Offsets(5, 9)}, {A}))
    assert watch.observe(obs(30, {A: Offsets(5, 9)}, {A})).action is Action.EXIT


def test_a_fatal_error_exits_at_once():
    verdict = ProgressWatch(STALL).observe(obs(0, {A: Offsets(9, 9)}, {A}, fatal="fenced"))
    assert verdict.action is Action.EXIT and not verdict.ready and "fenced" in verdict.reason


def test_unreadable_offsets_are_not_ready_after_stall_after_s_but_call_for_no_action():
    watch = ProgressWatch(STALL)
    watch.observe(obs(0, {A: Offsets(5, 9)}, {A}))
    assert watch.observe(obs(10, None)).ready
    verdict = watch.observe(obs(40, None))
    assert not verdict.ready and verdict.action is Action.NONE and "unreadable" in verdict.reason
    # the broker is back: the consumer gets a whole stall period to catch up
    assert watch.observe(obs(41, {A: Offsets(5, 9)}, {A})).ready
    assert watch.observe(obs(69, {A: Offsets(5, 9)}, {A})).ready
    assert watch.observe(obs(70, {A: Offsets(5, 9)}, {A})).action is Action.RECREATE


def test_waiting_on_a_dependency_is_not_ready_and_not_the_consumers_fault():
    watch = ProgressWatch(STALL)
    for t in range(0, 300, 5):
        verdict = watch.observe(obs(t, {A: Offsets(5, 9)}, {A}, waiting_on="PostgreSQL"))
        assert not verdict.ready and verdict.action is Action.NONE
        assert verdict.reason == "waiting for PostgreSQL"
    assert watch.observe(obs(300, {A: Offsets(5, 9)}, {A})).ready  # back: a fresh period
    assert watch.observe(obs(330, {A: Offsets(5, 9)}, {A})).action is Action.RECREATE


def test_commits_failing_for_stall_after_s_is_a_stall_then_an_exit():
    watch = ProgressWatch(STALL)
    assert watch.observe(obs(0, {A: Offsets(5, 5)}, {A}, commit_failing=True)).ready
    verdict = watch.observe(obs(30, {A: Offsets(5, 5)}, {A}, commit_failing=True))
    assert verdict.action is Action.RECREATE and "commits failing" in verdict.reason
    watch.recreated(30)
    assert watch.observe(obs(40, {A: Offsets(5, 5)}, {A}, commit_failing=True)).action is Action.NONE
    assert watch.observe(obs(70, {A: Offsets(5, 5)}, {A}, commit_failing=True)).action is Action.EXIT


def test_a_commit_failure_that_clears_is_forgotten():
    watch = ProgressWatch(STALL)
    watch.observe(obs(0, {A: Offsets(5, 5)}, {A}, commit_failing=True))
    watch.observe(obs(20, {A: Offsets(5, 5)}, {A}))
    assert watch.observe(obs(40, {A: Offsets(5, 5)}, {A}, commit_failing=True)).ready


def test_stall_after_s_must_be_positive():
    with pytest.raises(ValueError):
        ProgressWatch(0)


def test_verdict_as_dict_names_partitions():
    assert Verdict(False, Action.EXIT, "x", (A,)).as_dict() == {
        "ready": False, "action": "exit", "reason": "x", "stalled": ["status[0]"]}


# -- properties over random histories ----------------------------------------------------------

steps = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.booleans()),
                 min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_no_action_without_a_partition_stuck_behind_for_stall_after_s(history):
    """Whatever the history: RECREATE/EXIT only if some judged partition had records to commit
    and an unchanged committed offset for at least stall_after_s since it was last seen caught
    up or moving (the record may have come any time after that: the rule of
    test_the_timer_starts_when_the_partition_was_last_seen_caught_up); EXIT only after a
    RECREATE."""
    watch = ProgressWatch(10.0)
    committed, end = 0, 0
    last_ok = 0.0  # when the partition was last seen caught up, or its committed offset moved
    recreated = False
    for t, (commit_step, produce_step, recreate_now) in zip(itertools.count(0, 2.5), history):
        before = committed
        end += produce_step
        committed = min(end, committed + commit_step)
        if committed != before or committed == end:
            last_ok = t
        verdict = watch.observe(obs(t, {A: Offsets(committed, end)}, {A}))
        if verdict.action is not Action.NONE:
            assert committed != end and t - last_ok >= 10.0
            assert not verdict.ready
        if verdict.action is Action.EXIT:
            assert recreated
        if verdict.action is Action.RECREATE and recreate_now:
            watch.recreated(t)
            recreated = True
            last_ok = t
        if verdict.ready:
            assert verdict.action is Action.NONE
