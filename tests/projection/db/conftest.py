from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.projection.db.helpers import fresh_database


@pytest.fixture
def db_url(database_url: str) -> Iterator[str]:
    """An empty database of its own for one test."""
    with fresh_database(database_url) as url:
        yield url
