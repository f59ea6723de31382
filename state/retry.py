"""The one retry policy: what happens after a failed attempt. Pure: no I/O, no clock, no Kafka.

Workers call :func:`decide` after an attempt fails, the processors' lease timer after a lease
time-out (through ``state.stops.decide_after_stop``); nobody else decides whether a task runs
again. The decision is reported as one status event (:meth:`RetryDecision.reported_as`): a FAIL is
FAILED for the failed attempt (final: nothing follows it), a RETRY is QUEUED for the next attempt
carrying the failed attempt's error (``retryable`` true) -- never FAILED followed by more work.

* A code whose seed "Retry" column says yes (``ErrorCode.retryable``: PROVIDER_TIMEOUT,
  PROVIDER_ERROR, STORAGE_ERROR) is retried while ``attempt < policy.max_attempts``; any other
  code (INVALID_INPUT, CONTENT_POLICY), or the last allowed attempt, fails the task.
* ``attempt`` is the envelope's attempt number (1-based) of the attempt that just failed, so the
  bound counts every visible attempt of the task, whoever started it.
* The delay before attempt ``n + 1`` is ``backoff_base_s * 2 ** (n - 1)``, capped at
  ``backoff_max_s``, then spread by up to ``± jitter`` (a fraction) and capped again. The spread
  is a pure function of ``(seed, attempt)``: pass the task id as ``seed`` so that tasks failing
  together do not retry together, while a test can still assert the exact delay. No seed, no
  spread.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, Field

from schemas.enums import ErrorCode, TaskStatus

__all__ = ["Action", "RetryDecision", "RetryPolicy", "RetrySettings", "backoff_s", "decide"]


@dataclass(frozen=True)
class RetryPolicy:
    # Three attempts: one retry for a transient blip, a second for a slow recovery; a task that
    # fails three times in a row has a real problem an operator should see.
    max_attempts: int = 3
    # One second, doubling: long enough for a restarted dependency, short for the user waiting.
    backoff_base_s: float = 1.0
    # A minute at most between attempts: a task is interactive work, not a batch job.
    backoff_max_s: float = 60.0
    # ±10 % spread so a burst of failures does not come back as a burst of retries.
    jitter: float = 0.1

    def __post_init__(self) -> None:
        problems = []
        if self.max_attempts < 1:
            problems.append(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_base_s < 0:
            problems.append(f"backoff_base_s must be >= 0, got {self.backoff_base_s}")
        if self.backoff_max_s < self.backoff_base_s:
            problems.append(
                f"backoff_max_s ({self.backoff_max_s}) must be >= backoff_base_s "
                f"({self.backoff_base_s})"
            )
        if not 0.0 <= self.jitter < 1.0:
            problems.append(f"jitter must lie in [0, 1), got {self.jitter}")
        if problems:
            raise ValueError("invalid retry policy: " + "; ".join(problems))


class RetrySettings(BaseModel):
    """The policy as settings, for a process's settings class to inherit (``WORKER_RETRY_*``,
    ``PROCESSORS_RETRY_*``): every process that decides retries reads the same four values."""

    retry_max_attempts: int = Field(default=RetryPolicy.max_attempts, ge=1)
    retry_backoff_base_s: float = Field(default=RetryPolicy.backoff_base_s, ge=0)
    retry_backoff_max_s: float = Field(default=RetryPolicy.backoff_max_s, ge=0)
    retry_jitter: float = Field(default=RetryPolicy.jitter, ge=0, lt=1)

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.retry_max_attempts,
            backoff_base_s=self.retry_backoff_base_s,
            backoff_max_s=max(self.retry_backoff_max_s, self.retry_backoff_base_s),
            jitter=self.retry_jitter,
        )


class Action(StrEnum):
    RETRY = "retry"
    FAIL = "fail"


@dataclass(frozen=True)
class RetryDecision:
    """``RETRY`` with the delay before ``next_attempt``, or ``FAIL``; ``reason`` is for logs and
    the FAILED event's message."""

    action: Action
    reason: str
    delay_s: float = 0.0
    next_attempt: int | None = None

    @property
    def retry(self) -> bool:
        return self.action is Action.RETRY

    def reported_as(self, failed_attempt: int) -> tuple[TaskStatus, int]:
        """The status event that reports this decision for ``failed_attempt``: (QUEUED, the next
        attempt) for a retry, (FAILED, ``failed_attempt``) otherwise."""
        if self.retry:
            return TaskStatus.QUEUED, failed_attempt + 1
        return TaskStatus.FAILED, failed_attempt


def _spread(seed: object, attempt: int) -> float:
    """A deterministic number in [-1, 1] for ``(seed, attempt)``."""
    digest = hashlib.blake2b(f"{seed}\x1f{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / (2**64 - 1) * 2.0 - 1.0


def backoff_s(attempt: int, policy: RetryPolicy, seed: object | None = None) -> float:
    """The wait after failed attempt ``attempt`` (>= 1) before the next one starts."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    # min() before the power would overflow: 2 ** 1100 is fine for ints, not for floats.
    exponent = min(attempt - 1, 64)
    raw = min(policy.backoff_base_s * 2.0**exponent, policy.backoff_max_s)
    if seed is None or policy.jitter == 0.0:
        return raw
    return min(raw * (1.0 + policy.jitter * _spread(seed, attempt)), policy.backoff_max_s)


def decide(
    error_code: ErrorCode,
    attempt: int,
    policy: RetryPolicy = RetryPolicy(),
    *,
    seed: object | None = None,
) -> RetryDecision:
    """What to do after attempt ``attempt`` failed with ``error_code``."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    code = ErrorCode(error_code)
    if not code.retryable:
        return RetryDecision(Action.FAIL, f"{code.value} is not retryable")
    if attempt >= policy.max_attempts:
        return RetryDecision(
            Action.FAIL,
            f"attempt {attempt} of {policy.max_attempts} failed with {code.value}; none left",
        )
    delay = backoff_s(attempt, policy, seed)
    return RetryDecision(
        Action.RETRY,
        f"{code.value} is retryable; attempt {attempt + 1} of {policy.max_attempts} in {delay:.2f}s",
        delay_s=delay,
        next_attempt=attempt + 1,
    )
