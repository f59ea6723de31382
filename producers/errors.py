"""Errors of the submission client."""

from __future__ import annotations

from schemas.errors import ComputeError


class ProducerError(ComputeError):
    """Root of the producer's own errors."""


class DeliveryError(ProducerError):
    """The broker did not acknowledge some task records. They were not queued and their ids may
    be submitted again; check the broker address, the topic (``computectl topics create``) and
    the client's security settings."""

    def __init__(self, failures: list[tuple[str, str]], too_large: list[str] | None = None) -> None:
        self.failures = failures  # (task id, broker's reason)
        self.too_large = too_large or []  # ids of tasks the broker refused as too large
        first = "; ".join(f"{tid}: {why}" for tid, why in failures[:3])
        more = f" (+{len(failures) - 3} more)" if len(failures) > 3 else ""
        super().__init__(f"{len(failures)} task(s) not delivered: {first}{more}")


class TaskTooLargeError(ProducerError):
    """A task's record is larger than the producer or the broker accept (``message.max.bytes``,
    the topic's ``max.message.bytes``); nothing was produced. Pass large inputs by URL, or raise
    both limits together."""

    def __init__(self, what: str, size_bytes: int | None, limit_bytes: int | None) -> None:
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes
        size = f" ({size_bytes} bytes)" if size_bytes is not None else ""
        limit = f" of {limit_bytes} bytes" if limit_bytes is not None else ""
        super().__init__(f"{what}{size} is over the broker's size limit{limit}; nothing was "
                         "queued: pass large inputs by URL")
