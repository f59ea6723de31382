"""Real catalog ids (and runnable workflow steps) for schemathesis' schema-valid bodies, in the
suite and by hand.

Whether a catalog id exists is the database's to say, not the document's: a generation naming
an unknown one is 422 ``unknown-catalog-entry`` (the document's description says so). A body the
fuzzer meant to be valid therefore gets the ids of real entries, as a client's would, so the
fuzzing reaches the planning behind them; invalid bodies are left as they are.

Whether a workflow's steps form a DAG that can run (ids, dependencies, mappings, each step's
parameters once mapped) is the workflow domain's to say (422 ``workflow-invalid``): a schema-valid
workflow body gets a runnable pair of steps (:func:`make_steps_runnable`), its other fields as
drawn.

tests/api/test_openapi_contract.py calls both. By hand
(docs/API.md, "The OpenAPI document is the contract"), ``SCHEMATHESIS_HOOKS=
tests.api.contract_hooks`` and ``CONTRACT_CATALOG='{"subject_id": "<id>", ...}'`` make
``schemathesis run`` do the same (the hook exists only when loaded that way).
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis
from schemathesis.core.parameters import ParameterLocation

# The body fields that name catalog entries.
CATALOG_FIELDS = {"subject_id": "subjects", "product_id": "products", "style_id": "styles"}
RUNNABLE_STEPS = [
    {"id": "generate", "task_type": "GENERATION", "config": {"prompt": "a red dress"}},
    {"id": "adjust", "task_type": "IMAGE_ADJUSTER", "depends_on": ["generate"], "config": {"brightness": 0.1},
     "input_mappings": [{"from_step": "generate", "from_field": "result_image_url", "to_field": "base_image_url"}]},
]


def make_steps_runnable(case: Any) -> None:
    """Give a schema-valid POST /workflows body steps that form a runnable workflow."""
    if (not isinstance(case.body, dict) or case.meta is None or case.meta.is_negative_at(ParameterLocation.BODY)
            or case.operation.path != "/api/v1/workflows" or case.method.upper() != "POST"):
        return
    case.body["steps"] = json.loads(json.dumps(RUNNABLE_STEPS))


def name_real_catalog_entries(case: Any, catalog: dict[str, str]) -> None:
    """Point the catalog ids of a schema-valid body at real entries (``catalog``: field -> id)."""
    if not isinstance(case.body, dict) or case.meta is None or case.meta.is_negative_at(ParameterLocation.BODY):
        return
    for field, entry_id in catalog.items():
        if isinstance(case.body.get(field), str):
            case.body[field] = entry_id


if os.environ.get("SCHEMATHESIS_HOOKS") == __name__:  # `schemathesis run` loads it; the suite does not

    @schemathesis.hook
    def map_case(context: Any, case: Any) -> Any:
        name_real_catalog_entries(case, json.loads(os.environ.get("CONTRACT_CATALOG") or "{}"))
        make_steps_runnable(case)
        return case
