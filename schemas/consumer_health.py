"""Is this consumer making progress? A pure judge for long-running Kafka consumers (issue 15).

No Kafka, no clock, no threads: the caller observes its consumer every few seconds (the group's
committed offsets and the partitions' end offsets, which it reads with a probe of its own, plus
what only the process knows: its assignment, whether it waits on a dependency of its own, commit
failures, fatal client errors) and hands each :class:`Observation` to :meth:`ProgressWatch.observe`,
which returns a :class:`Verdict`: ready or not, why, and what to do.

The one rule: **a partition that has records the group has not committed must see its committed
offset move within ``stall_after_s``**. Committed offsets are the only progress that survives a
restart, and the one every stall seen in issue 15 froze: the projector idle in ``poll()`` with no
assignment after a broker freeze (its group EMPTY, the backlog not moving), and the processors
folding on while one partition's commits had stopped. A partition with nothing to commit is never
stalled, however long it is quiet.

One allowance: while the member commits on *other* partitions within ``stall_after_s``, a
partition waiting its turn gets up to ``busy_grace_s`` (default six times ``stall_after_s``). A
consumer draining a large backlog is fed a fetched chunk of one partition after another, and
judging each partition alone made the projector exit while it worked through 100,000 queued
statuses (issue 19's backlog bench). A member that commits nothing anywhere is still stalled
after ``stall_after_s``.

Which partitions are judged: the member's assignment; with no assignment (or an unknown one),
every partition observed - "no assignment while the topic has a backlog" is a stall unless some
other member of the group commits it.

What to do, in order (the caller carries it out):

- ``Action.RECREATE`` at the first stall: close the consumer and make a new one (or force a
  rejoin), then call :meth:`ProgressWatch.recreated`. Its timers restart.
- ``Action.EXIT`` when, after a recreate, a partition that was stalled then stalls again before
  it committed anything: exit non-zero and let the supervisor start a fresh process. Also at once
  for a fatal client error (``Observation.fatal``).
- ``Action.NONE`` otherwise - also while the offsets cannot be read (the broker is away: a new
  consumer cannot reach it either; librdkafka/aiokafka reconnect on their own) and while the
  process says it waits on a dependency of its own (``waiting_on``, e.g. PostgreSQL is down):
  not ready, but nothing a new consumer would fix. Both restart the partitions' timers, so a
  consumer gets a whole ``stall_after_s`` to catch up once the broker or the dependency is back.

``Verdict.ready`` is what a readiness probe should answer: False while a partition is stalled,
from a recreate until the partitions that were stalled have moved, while waiting on a dependency,
after ``stall_after_s`` of unreadable offsets, and after a fatal error.

Usage::

    watch = ProgressWatch(stall_after_s=30)
    verdict = watch.observe(Observation(at=time.monotonic(), offsets={("t", 0): Offsets(5, 9)},
                                        assigned=frozenset({("t", 0)})))
    if verdict.action is Action.RECREATE:
        recreate_consumer()
        watch.recreated(time.monotonic())
    elif verdict.action is Action.EXIT:
        sys.exit(70)
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Action", "Observation", "Offsets", "PartitionKey", "ProgressWatch", "Verdict"]

PartitionKey = tuple[str, int]  # (topic, partition)


@dataclass(frozen=True, slots=True)
class Offsets:
    """One partition as the group sees it: its committed offset (None: nothing committed yet),
    and the log's end (high watermark) and start (low watermark)."""

    committed: int | None
    end: int
    start: int = 0

    @property
    def backlog(self) -> int:
        """Records after the committed offset (after the log start when none is committed)."""
        done = self.start if self.committed is None else max(self.committed, self.start)
        return max(self.end - done, 0)


@dataclass(frozen=True, slots=True)
class Observation:
    """What the caller saw at ``at`` (monotonic seconds).

    ``offsets``: every partition the consumer reads (None: they could not be read);
    ``assigned``: this member's partitions (None: unknown; empty: none);
    ``waiting_on``: a dependency of the process itself it is blocked on (its database), if any;
    ``commit_failing``: the consumer's last commit failed (a failure that lasts is a stall even
    before the committed offsets say so); ``fatal``: a fatal client error's text."""

    at: float
    offsets: Mapping[PartitionKey, Offsets] | None
    assigned: frozenset[PartitionKey] | None = None
    waiting_on: str | None = None
    commit_failing: bool = False
    fatal: str | None = None


class Action(enum.Enum):
    NONE = "none"
    RECREATE = "recreate"  # close the consumer and make a new one (rejoin the group)
    EXIT = "exit"  # exit non-zero: the supervisor starts a fresh process


@dataclass(frozen=True, slots=True)
class Verdict:
    ready: bool
    action: Action = Action.NONE
    reason: str = ""  # empty while making progress
    stalled: tuple[PartitionKey, ...] = ()

    def as_dict(self) -> dict[str, object]:
        """JSON-ready, for health endpoints and logs."""
        return {"ready": self.ready, "action": self.action.value, "reason": self.reason,
                "stalled": [f"{t}[{p}]" for t, p in self.stalled]}


@dataclass(slots=True)
class _Partition:
    committed: int | None
    since: float  # when it last had nothing to commit, or its committed offset last moved


@dataclass
class ProgressWatch:
    """The judge; one per consumer. Not thread-safe: one thread observes."""

    stall_after_s: float
    # False: skip the recreate step, exit at the first stall (a consumer that cannot be
    # recreated in place).
    recreate: bool = True
    # How long a partition may wait while the member commits others (None: 6 x stall_after_s).
    busy_grace_s: float | None = None
    _partitions: dict[PartitionKey, _Partition] = field(default_factory=dict)
    _recovering: set[PartitionKey] = field(default_factory=set)  # stalled at the last recreate
    _recovering_commits: bool = False  # commits were failing at the last recreate
    _unknown_since: float | None = None
    _member_moved_at: float | None = None  # when any judged partition's commit last moved
    _commit_failing_since: float | None = None
    _gave_up: str | None = None
    last: Verdict = field(default_factory=lambda: Verdict(ready=True))

    def __post_init__(self) -> None:
        if self.stall_after_s <= 0:
            raise ValueError(f"stall_after_s must be positive, got {self.stall_after_s}")
        if self.busy_grace_s is None:
            self.busy_grace_s = 6 * self.stall_after_s
        elif self.busy_grace_s < self.stall_after_s:
            raise ValueError(f"busy_grace_s ({self.busy_grace_s}) must be >= stall_after_s"
                             f" ({self.stall_after_s})")

    def observe(self, obs: Observation) -> Verdict:
        self.last = self._judge(obs)
        return self.last

    def recreated(self, at: float, verdict: Verdict | None = None) -> None:
        """The caller recreated the consumer (or forced a rejoin) on ``verdict`` (default: the
        last one): its stalled partitions must now move, or the next stall is an exit. Pass the
        verdict that asked for the recreate: a recreate takes time, and a verdict judged
        meanwhile (offsets unreadable) names no stalled partition - with it, the next stall
        would be another recreate instead of the exit."""
        asked = verdict if verdict is not None else self.last
        self._recovering = set(asked.stalled)
        self._recovering_commits = self._commit_failing_since is not None
        self._restart(at)

    def give_up(self, reason: str) -> Verdict:
        """The caller cannot carry out a verdict (its consumer's thread is stuck): from now on
        every verdict is this exit."""
        self._gave_up = reason
        self.last = Verdict(False, Action.EXIT, reason)
        return self.last

    # -- internals ---------------------------------------------------------------------------

    def _restart(self, at: float) -> None:
        for part in self._partitions.values():
            part.since = at
        self._commit_failing_since = None

    def _judge(self, obs: Observation) -> Verdict:
        if self._gave_up is not None:
            return Verdict(False, Action.EXIT, self._gave_up)
        if obs.fatal:
            return Verdict(False, Action.EXIT, f"fatal consumer error: {obs.fatal}")
        if obs.offsets is None:
            if self._unknown_since is None:
                self._unknown_since = obs.at
            self._restart(obs.at)
            unknown_s = obs.at - self._unknown_since
            if unknown_s >= self.stall_after_s:
                return Verdict(False, reason=f"offsets unreadable for {unknown_s:.0f}s"
                                             " (broker unreachable?)")
            return Verdict(self.last.ready, reason=self.last.reason)
        self._unknown_since = None
        judged = self._judged(obs)
        self._track(obs.at, judged)
        if obs.waiting_on:
            self._restart(obs.at)
            return Verdict(False, reason=f"waiting for {obs.waiting_on}")
        # The member committed somewhere within the window: a partition waiting its turn is
        # judged against the busy grace instead (see the module's docstring).
        busy = (self._member_moved_at is not None
                and obs.at - self._member_moved_at < self.stall_after_s)
        limit = self.busy_grace_s if busy else self.stall_after_s
        assert limit is not None
        stalled = tuple(sorted(key for key, part in self._partitions.items()
                               if judged[key].backlog > 0 and obs.at - part.since >= limit))
        reasons = []
        if stalled:
            backlog = sum(judged[k].backlog for k in stalled)
            whose = "no partition assigned; " if not obs.assigned else ""
            reasons.append(f"{whose}committed offsets of {len(stalled)} partition(s) with"
                           f" {backlog} record(s) to commit did not move for {limit:g}s")
        if obs.commit_failing:
            if self._commit_failing_since is None:
                self._commit_failing_since = obs.at
            if obs.at - self._commit_failing_since >= self.stall_after_s:
                reasons.append(f"commits failing for {obs.at - self._commit_failing_since:.0f}s")
        else:
            self._commit_failing_since = None
            self._recovering_commits = False
        recovering = bool(self._recovering) or self._recovering_commits
        if reasons:
            action = Action.EXIT if recovering or not self.recreate else Action.RECREATE
            return Verdict(False, action, "; ".join(reasons), stalled)
        if recovering:
            return Verdict(False, reason="recreated the consumer; waiting for its partitions"
                                         " to move")
        return Verdict(True)

    def _judged(self, obs: Observation) -> dict[PartitionKey, Offsets]:
        assert obs.offsets is not None
        if obs.assigned:
            return {k: v for k, v in obs.offsets.items() if k in obs.assigned}
        return dict(obs.offsets)

    def _track(self, at: float, judged: Mapping[PartitionKey, Offsets]) -> None:
        """Update each judged partition's timer; forget the others (a partition that comes back
        starts afresh). A recovering partition that moved, or left this member, has healed."""
        for key in list(self._partitions):
            if key not in judged:
                del self._partitions[key]
        for key, offsets in judged.items():
            part = self._partitions.get(key)
            if part is None:
                self._partitions[key] = _Partition(offsets.committed, at)
                moved = False
            else:
                moved = offsets.committed != part.committed
                if moved or offsets.backlog == 0:
                    part.since = at
                part.committed = offsets.committed
            if moved:
                self._member_moved_at = at
            if moved or offsets.backlog == 0:
                self._recovering.discard(key)
        # a partition that went to another member is that member's to move
        self._recovering = {k for k in self._recovering if k in judged}
