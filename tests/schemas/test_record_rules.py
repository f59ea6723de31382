"""The key/header rules of task records (schemas/record_rules.py) and the derived task trace."""

from __future__ import annotations

import uuid

import pytest

from schemas.errors import DecodeError
from schemas.headers import task_trace_id, trace_id_of
from schemas.record_rules import RecordRuleError, check_task_record

TASK = "6f1c1f0e-4b1a-4c3e-9d2f-0a1b2c3d4e5f"
EVENT = "0e6a7c5d-1111-4222-8333-944455556666"
NAME = "compute.events.ImageAdjusterTaskSubmitted"
HEADERS = {"ce_specversion": "1.0", "ce_id": EVENT, "ce_source": "/compute/java",
           "ce_type": NAME, "traceparent": f"00-{'a' * 32}-{'b' * 16}-01"}


def check(key: bytes | None = TASK.encode(), headers: dict[str, str] | None = None) -> RecordRuleError | None:
    return check_task_record(key, HEADERS if headers is None else headers, task_id=TASK,
                             event_id=EVENT, avro_name=NAME)


def test_a_record_that_repeats_its_envelope_passes() -> None:
    assert check() is None


@pytest.mark.parametrize("headers", [{}, {"traceparent": "garbage"}, {"ce_specversion": "1.0"},
                                     {"ce_id": EVENT}, {"ce_type": NAME}])
def test_headers_are_optional(headers: dict[str, str]) -> None:
    assert check(headers=headers) is None


def test_a_key_other_than_the_task_id_is_refused_naming_both() -> None:
    other = str(uuid.uuid4())
    error = check(key=other.encode())
    assert isinstance(error, RecordRuleError) and isinstance(error, DecodeError)  # dead-lettered
    assert other in str(error) and TASK in str(error)


@pytest.mark.parametrize("key", [None, b"", TASK.upper().encode(), b"\xff\xfe"])
def test_no_key_an_empty_one_another_spelling_or_bytes_that_are_not_text_are_refused(key: bytes | None) -> None:
    assert check(key=key) is not None


def test_a_ce_id_other_than_the_event_id_is_refused_naming_both() -> None:
    error = check(headers={**HEADERS, "ce_id": "not-the-event"})
    assert error is not None and "not-the-event" in str(error) and EVENT in str(error)


def test_a_ce_type_of_another_record_type_is_refused_naming_both() -> None:
    error = check(headers={**HEADERS, "ce_type": "compute.events.GenerationTaskSubmitted"})
    assert error is not None
    assert "GenerationTaskSubmitted" in str(error) and NAME in str(error)


def test_the_key_is_checked_before_the_headers() -> None:
    error = check(key=b"k", headers={**HEADERS, "ce_id": "x"})
    assert error is not None and "key" in str(error)


def test_a_task_without_a_trace_gets_one_derived_from_its_id() -> None:
    assert task_trace_id(TASK) == TASK.replace("-", "")  # documented: the UUID's 32 hex digits
    assert task_trace_id(TASK) == task_trace_id(TASK)  # every writer computes the same one
    assert task_trace_id(TASK) != task_trace_id(str(uuid.uuid4()))


@pytest.mark.parametrize("task_id", ["not-a-uuid", str(uuid.UUID(int=0))])
def test_a_task_id_that_is_no_trace_id_is_hashed_into_a_valid_one(task_id: str) -> None:
    trace = task_trace_id(task_id)
    assert trace_id_of(f"00-{trace}-{'1' * 16}-01") == trace and trace != "0" * 32
