"""The list envelope every collection answers with, and the paging parameters of its query.

``Page[T]`` holds the shape once (``items``, ``total`` over all pages, ``page``, ``page_size``);
each resource subclasses it with a name of its own (``TasksPublic``, ``WorkflowsPublic``,
``GenerationsPublic``), so the OpenAPI document keeps one named schema per collection rather
than pydantic's generated ``Page_TaskPublic_``, and says in ``total`` what it counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Generic, Literal, Protocol, Self, TypeVar

from pydantic import BaseModel, Field

# The bounds: 50 a page unless asked, never more than 200 (a page stays one quick query).
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 200
# Far beyond any real listing; keeps OFFSET arithmetic inside a bigint.
MAX_PAGE = 1_000_000

# The paging parameters of a list query (``page: PageNumber = 1``,
# ``page_size: PageSize = DEFAULT_PAGE_SIZE``), and the order of the lists sorted by creation.
PageNumber = Annotated[int, Field(ge=1, le=MAX_PAGE)]
PageSize = Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)]
CreatedOrder = Annotated[Literal["asc", "desc"], Field(description="by created_at")]

T = TypeVar("T")


class Paged(Protocol):
    """A list query: which page, of how many items."""

    @property
    def page(self) -> int: ...

    @property
    def page_size(self) -> int: ...


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(description="items matching the filters, over all pages")
    page: int
    page_size: int

    @classmethod
    def of(cls, items: Iterable[T], total: int, query: Paged) -> Self:
        """The page ``query`` asked for, holding ``items`` of ``total`` matches."""
        return cls(items=list(items), total=total, page=query.page, page_size=query.page_size)
