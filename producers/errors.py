"""Errors of the submission client."""

from __future__ import annotations

from schemas.errors import ComputeError


class ProducerError(ComputeError):
    """Root of the producer's own errors."""


class DeliveryError(ProducerError):
    """The broker did not acknowledge some task records. They were not queued and their ids may
    be submitted again; check the broker address, the topic (``computectl topics create``) and
    the client's security settings."""

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        self.failures = failures  # (task id, broker's reason)
        first = "; ".join(f"{tid}: {why}" for tid, why in failures[:3])
        more = f" (+{len(failures) - 3} more)" if len(failures) > 3 else ""
        super().__init__(f"{len(failures)} task(s) not delivered: {first}{more}")
