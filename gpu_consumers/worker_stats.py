"""The worker's counters: what ``Worker.run`` returns and ``computectl worker --json`` prints."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WorkerStats:
    completed: int = 0
    failed: int = 0
    retried: int = 0  # attempts started after a failed attempt
    cancelled: int = 0
    dead_lettered: int = 0
    aborted: int = 0  # stopped by shutdown, left to the group
    handled: int = 0  # records taken from the task topics
    already_ended: int = 0  # taken over with a final status on the topic: committed, not run
    takeover_waits: int = 0  # takeover checks that could not read the status topic (then waited)
    fallbacks: int = 0  # tasks run on their type's fallback provider (gpu_consumers/providers.py)
