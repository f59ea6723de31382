"""What a handler's exception becomes on its way from the handler process to the worker: its
typed failure (and so its error code and retry rule) survives; anything else arrives as a
ChildError with the handler's traceback, a torch out-of-memory as ChildOutOfMemory."""

from __future__ import annotations

import pytest

from gpu_consumers.errors import InvalidInput, ProviderTimeout, StorageFailure, TaskCancelled
from gpu_consumers.execution import _is_oom
from gpu_consumers.supervisor import ChildError, ChildOutOfMemory, _describe, _rebuild
from schemas.enums import ErrorCode


class OddSize(InvalidInput):
    """A handler's own subclass: still INVALID_INPUT."""


def roundtrip(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as raised:  # with a traceback, as in the child
        return _rebuild(*_describe(raised))


@pytest.mark.parametrize("exc, code", [
    (InvalidInput("mask of the wrong size"), ErrorCode.INVALID_INPUT),
    (OddSize("odd"), ErrorCode.INVALID_INPUT),
    (ProviderTimeout("slow"), ErrorCode.PROVIDER_TIMEOUT),
    (StorageFailure("disk"), ErrorCode.STORAGE_ERROR),
])
def test_a_typed_failure_keeps_its_code_and_message(exc, code) -> None:
    back = roundtrip(exc)
    assert back.code is code and str(back) == str(exc)


def test_a_cancel_a_plain_error_and_an_out_of_memory() -> None:
    assert isinstance(roundtrip(TaskCancelled("cancelled by request")), TaskCancelled)
    plain = roundtrip(ZeroDivisionError("division by zero"))
    assert isinstance(plain, ChildError) and plain.type_name == "ZeroDivisionError"
    assert str(plain) == "division by zero"  # the traceback is logged, not sent: no paths
    import torch  # the handlers' dependency, installed with the worker
    oom = roundtrip(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert isinstance(oom, ChildOutOfMemory) and _is_oom(oom)
