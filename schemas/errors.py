"""The root of every error this project raises, and the contract-level errors.

Each subpackage has its own ``errors.py`` deriving from :class:`ComputeError`; a message says
what failed and what an operator or caller should do about it.
"""

from __future__ import annotations


class ComputeError(Exception):
    """Root of all Compute Server errors."""


class ContractError(ComputeError):
    """A value does not satisfy the event contracts in ``schemas/``."""


class TaskValidationError(ContractError):
    """A task's parameters break the seed's rules. Nothing was produced; fix the named field."""

    def __init__(self, task_type: str, problems: list[tuple[str, str]]) -> None:
        self.task_type = task_type
        self.problems = problems  # (field path, rule broken)
        lines = "; ".join(f"{field}: {rule}" for field, rule in problems)
        super().__init__(f"invalid {task_type} task: {lines}")


class DecodeError(ContractError):
    """Bytes on a topic are not one of our events (unknown framing, unknown schema, bad Avro).

    The record belongs in the dead-letter topic; the consumer moves on.
    """


class UnknownSchemaError(DecodeError):
    """The record names a schema (fingerprint or registry id) this reader cannot find.

    Start the reader with access to the schema store topic or the schema registry.
    """
