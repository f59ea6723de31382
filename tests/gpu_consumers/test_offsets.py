"""The commit ledger (pure): what a rebalance rejected is sent again while the partition is owned."""

from __future__ import annotations

from gpu_consumers.offsets import CommitLedger
from gpu_consumers.takeover import final_end, status_partition
from schemas.enums import ErrorCode, TaskStatus, TaskType
from schemas.events import Envelope, StatusChanged, TaskError

TP, OTHER = ("t", 0), ("t", 1)


def test_a_rejected_commit_is_due_again_after_an_assignment_and_then_every_retry_interval():
    ledger = CommitLedger(retry_s=1.0)
    ledger.want(TP, 5)
    assert ledger.due([TP], now=0.0) == [(TP, 5, False)]  # sent; the broker rejects it
    assert ledger.due([TP], now=0.5) == []  # not yet: it may still be answered
    ledger.retry_now = True  # the rejoin
    assert ledger.due([TP], now=0.6) == [(TP, 5, True)]
    assert ledger.due([TP], now=1.0) == []
    assert ledger.due([TP], now=1.7) == [(TP, 5, True)]
    ledger.confirm(TP, 5)
    assert ledger.due([TP], now=9.0) == []
    assert ledger.retried == 2


def test_only_owned_partitions_are_retried_and_a_later_offset_supersedes():
    ledger = CommitLedger(retry_s=1.0)
    ledger.want(TP, 5)
    ledger.want(OTHER, 3)
    assert ledger.due([TP, OTHER], now=0.0) == [(TP, 5, False), (OTHER, 3, False)]
    ledger.want(TP, 7)
    ledger.confirm(TP, 5)  # the older commit's answer: 7 is still pending
    assert ledger.pending(TP) == 7
    assert ledger.due([TP], now=5.0) == [(TP, 7, False)]  # OTHER is no longer owned
    ledger.forget([TP, OTHER], now_ms=1_000)
    assert ledger.pending(TP) is None and ledger.pending(OTHER) is None


def test_commits_of_quick_tasks_are_spaced_and_the_latest_offset_covers_the_rest():
    # One commit request per task queued the member's heartbeats behind hundreds of commits on
    # the coordinator's connection, and the broker fenced the worker.
    ledger = CommitLedger(spacing_s=0.1)
    ledger.want(TP, 1)
    assert ledger.due([TP], now=10.0) == [(TP, 1, False)]  # a lone task: at once
    for offset, now in ((2, 10.01), (3, 10.02), (4, 10.05)):
        ledger.want(TP, offset)
        assert ledger.due([TP], now=now) == []  # within the spacing: held
    assert ledger.due([TP], now=10.15) == [(TP, 4, False)]  # one request for the three
    ledger.want(OTHER, 9)
    ledger.retry_now = True  # an assignment, or the lane closing: what is held goes at once
    assert ledger.due([TP, OTHER], now=10.16) == [(TP, 4, True), (OTHER, 9, False)]


def test_what_was_finished_here_unconfirmed_is_known_when_the_partition_comes_back():
    # A fenced worker's commits are rejected; given the same partition again, the records below
    # its last unconfirmed commit are its own finished ones: no status-topic scan for each.
    ledger = CommitLedger()
    ledger.want(TP, 10)
    ledger.want(OTHER, 4)
    ledger.confirm(OTHER, 4)  # confirmed: the broker's committed offset is past them already
    ledger.forget([TP, OTHER], now_ms=5_000)
    assert ledger.finished == {TP: (10, 5_000)}
    assert ledger.finished_here(TP, 3, written_ms=4_000)
    assert ledger.finished_here(TP, 9, written_ms=5_000)
    assert not ledger.finished_here(OTHER, 1, written_ms=0)
    assert not ledger.finished_here(TP, 10, written_ms=4_000)  # the first record not finished here
    assert TP not in ledger.finished and not ledger.finished_here(TP, 3, written_ms=4_000)


def test_a_record_written_after_the_partition_went_is_not_taken_for_a_finished_one():
    # A topic deleted and made again starts at offset 0: its records are new work.
    ledger = CommitLedger()
    ledger.want(TP, 10)
    ledger.forget([TP], now_ms=5_000)
    assert not ledger.finished_here(TP, 2, written_ms=6_000)
    assert TP not in ledger.finished


def _status(status: TaskStatus, attempt: int, retryable: bool | None = None) -> StatusChanged:
    env = Envelope.new("6f1c1f0e-0000-4000-8000-000000000001", TaskType.IMAGE_ADJUSTER,
                       source="worker").model_copy(update={"attempt": attempt})
    error = None if retryable is None else TaskError(code=ErrorCode.PROVIDER_ERROR, message="x",
                                                     retryable=retryable)
    return StatusChanged(envelope=env, status=status, error=error)


def test_final_end_is_a_terminal_of_the_attempt_or_later_or_any_later_attempt():
    """Every terminal is final (issue 17); a later attempt's status means the record's attempt
    was retried and someone else holds the retry: not to be run again either."""
    processing = _status(TaskStatus.PROCESSING, 1)
    assert final_end([processing], attempt=1) is None
    retried = _status(TaskStatus.QUEUED, 2, True)  # attempt 1 failed, attempt 2 waits
    assert final_end([processing, retried], attempt=1) is retried
    assert final_end([processing, retried], attempt=2) is None  # the waiting attempt's record runs
    done = _status(TaskStatus.COMPLETED, 2)
    assert final_end([processing, retried, done], attempt=2) is done
    assert final_end([_status(TaskStatus.COMPLETED, 1)], attempt=2) is None  # an older attempt
    last = _status(TaskStatus.FAILED, 3, False)
    assert final_end([last], attempt=3) is last
    cancelled = _status(TaskStatus.CANCELLED, 2)
    assert final_end([processing, cancelled], attempt=2) is cancelled


def test_the_status_partition_is_every_writers_murmur2_for_the_key():
    # murmur2 like the Java client's default (schemas/partitioning.py; its own test has the table)
    assert status_partition("6f1c1f0e-0000-4000-8000-000000000001", 1) == 0
    assert status_partition("foobar", 7) == (-790332482 & 0x7FFFFFFF) % 7  # Java's murmur2 value
    assert {status_partition(f"task-{i}", 6) for i in range(100)} == set(range(6))
