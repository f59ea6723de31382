"""Fixtures of the handler tests (the helpers themselves are in ``support.py``)."""

from __future__ import annotations

import pytest

from tests.gpu_consumers.handlers.support import Harness


@pytest.fixture
def harness() -> Harness:
    return Harness()
