"""The one page model (api/models/pages.py): each collection keeps its own named schema in the
OpenAPI document, and a page answers the page its query asked for."""

from __future__ import annotations

from api import create_app, load_settings
from api.models.generations import GenerationListQuery, GenerationsPublic
from api.models.pages import Page
from api.models.tasks import TaskListQuery, TasksPublic
from api.models.workflows import WorkflowListQuery, WorkflowsPublic


def test_each_collection_is_a_named_page_in_the_document() -> None:
    # Building the document needs no broker or database (nothing runs the lifespan).
    schemas = create_app(load_settings()).openapi()["components"]["schemas"]
    assert not [name for name in schemas if name.startswith("Page")]
    for name, item, counted in (("TasksPublic", "TaskPublic", "tasks"),
                                ("WorkflowsPublic", "WorkflowSummary", "workflows"),
                                ("GenerationsPublic", "GenerationSummary", "generations")):
        schema = schemas[name]
        assert list(schema["properties"]) == ["items", "total", "page", "page_size"]
        assert schema["properties"]["items"]["items"] == {"$ref": f"#/components/schemas/{item}"}
        assert schema["properties"]["total"]["description"] == f"{counted} matching the filters, over all pages"


def test_a_page_answers_the_page_its_query_asked_for() -> None:
    query = WorkflowListQuery(page=3, page_size=7)
    page = WorkflowsPublic.of(iter(()), 15, query)
    assert (page.items, page.total, page.page, page.page_size) == ([], 15, 3, 7)
    assert isinstance(page, Page)
    # The paging parameters keep their bounds and defaults in every list query.
    for model in (TaskListQuery, WorkflowListQuery, GenerationListQuery):
        assert (model().page, model().page_size) == (1, 50)
        assert model.model_json_schema()["properties"]["page_size"]["maximum"] == 200
    assert GenerationsPublic.model_json_schema()["title"] == "GenerationsPublic"
    assert TasksPublic.model_fields["total"].description == "tasks matching the filters, over all pages"
