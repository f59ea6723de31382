"""The retry policy, exhaustively over error codes x attempts, plus backoff and jitter rules."""

from __future__ import annotations

import itertools

import pytest

from schemas.enums import ErrorCode, TaskStatus
from state.retry import Action, RetryDecision, RetryPolicy, backoff_s, decide

RETRYABLE = {ErrorCode.PROVIDER_TIMEOUT, ErrorCode.PROVIDER_ERROR, ErrorCode.STORAGE_ERROR}
POLICIES = [
    RetryPolicy(),
    RetryPolicy(max_attempts=1),
    RetryPolicy(max_attempts=5, backoff_base_s=0.5, backoff_max_s=3.0, jitter=0.0),
]


@pytest.mark.parametrize(
    ("policy", "code", "attempt"),
    [
        (policy, code, attempt)
        for policy in POLICIES
        for code, attempt in itertools.product(ErrorCode, range(1, policy.max_attempts + 3))
    ],
)
def test_every_code_and_attempt(policy: RetryPolicy, code: ErrorCode, attempt: int) -> None:
    decision = decide(code, attempt, policy)
    if code in RETRYABLE and attempt < policy.max_attempts:
        assert decision.action is Action.RETRY and decision.retry
        assert decision.next_attempt == attempt + 1
        expected = min(policy.backoff_base_s * 2 ** (attempt - 1), policy.backoff_max_s)
        assert decision.delay_s == pytest.approx(expected)
    else:
        assert decision.action is Action.FAIL and not decision.retry
        assert decision.next_attempt is None and decision.delay_s == 0.0
    assert decision.reason
    # Issue 17: a retry is reported as QUEUED for the next attempt, a failure as a final FAILED.
    assert decision.reported_as(attempt) == (
        (TaskStatus.QUEUED, attempt + 1) if decision.retry else (TaskStatus.FAILED, attempt))


def test_retryable_matches_the_seed_retry_column() -> None:
    assert {c for c in ErrorCode if c.retryable} == RETRYABLE


def test_exactly_max_attempts_run_for_a_failure_that_never_clears() -> None:
    policy = RetryPolicy(max_attempts=4)
    attempts = [1]
    while (decision := decide(ErrorCode.PROVIDER_ERROR, attempts[-1], policy)).retry:
        attempts.append(decision.next_attempt)
    assert attempts == [1, 2, 3, 4]


def test_backoff_doubles_then_caps() -> None:
    policy = RetryPolicy(backoff_base_s=1.0, backoff_max_s=10.0, jitter=0.0)
    assert [backoff_s(n, policy) for n in range(1, 8)] == [1, 2, 4, 8, 10, 10, 10]
    assert backoff_s(10_000, policy) == 10.0  # no float overflow on absurd attempts


def test_jitter_is_deterministic_per_seed_bounded_and_spreads() -> None:
    policy = RetryPolicy(backoff_base_s=2.0, backoff_max_s=100.0, jitter=0.25)
    delays = [decide(ErrorCode.PROVIDER_TIMEOUT, 1, policy, seed=f"task-{i}").delay_s for i in range(200)]
    assert all(1.5 <= d <= 2.5 for d in delays)
    assert len(set(delays)) > 150  # different tasks get different delays
    again = [decide(ErrorCode.PROVIDER_TIMEOUT, 1, policy, seed=f"task-{i}").delay_s for i in range(200)]
    assert delays == again
    # the same task gets a different spread on each attempt
    assert backoff_s(2, policy, "t") / 4.0 != backoff_s(3, policy, "t") / 8.0


def test_jitter_never_exceeds_the_cap() -> None:
    policy = RetryPolicy(max_attempts=50, backoff_base_s=1.0, backoff_max_s=5.0, jitter=0.5)
    assert max(backoff_s(n, policy, seed=s) for n in range(1, 50) for s in range(20)) <= 5.0


def test_no_seed_means_no_spread() -> None:
    assert decide(ErrorCode.STORAGE_ERROR, 2, RetryPolicy(jitter=0.5)).delay_s == 2.0


def test_decision_is_a_value() -> None:
    decision = decide(ErrorCode.PROVIDER_ERROR, 1, RetryPolicy(jitter=0.0))
    assert decision == RetryDecision(Action.RETRY, decision.reason, 1.0, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"backoff_base_s": -1.0},
        {"backoff_base_s": 5.0, "backoff_max_s": 1.0},
        {"jitter": 1.0},
        {"jitter": -0.1},
    ],
)
def test_invalid_policies_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="invalid retry policy"):
        RetryPolicy(**kwargs)


def test_attempts_start_at_one() -> None:
    with pytest.raises(ValueError):
        decide(ErrorCode.PROVIDER_ERROR, 0)
    with pytest.raises(ValueError):
        backoff_s(0, RetryPolicy())


def test_codes_may_be_given_as_strings() -> None:
    assert decide("INVALID_INPUT", 1).action is Action.FAIL  # type: ignore[arg-type]
