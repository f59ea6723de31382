"""``computectl workflow``: the pipeline file (the example is a valid workflow; a file that is not
one is refused before any request, exit 2, saying what is wrong) and the help."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from cli.workflow import WorkflowFileError, load_pipeline
from workflows.spec import WorkflowSpec, validate_workflow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fashion_pipeline.yaml"
# No API answers here: a request would fail with a connection error, not exit 2.
ENV = {"COMPUTE_API_URL": "http://127.0.0.1:9", "COMPUTE_API_KEY": "csk_test"}


def test_the_example_pipeline_is_a_valid_four_step_workflow() -> None:
    body = load_pipeline(EXAMPLE)
    validated = validate_workflow(WorkflowSpec.model_validate(body))
    assert validated.order == ("generate", "refine", "cutout", "adjust")
    assert [s["task_type"] for s in body["steps"]] == ["GENERATION", "REFINE", "BACKGROUND_REMOVE",
                                                       "IMAGE_ADJUSTER"]


@pytest.mark.parametrize("text, says", [
    ("name: x\nsteps: [unclosed", "not valid YAML"),
    ("- a\n- b\n", "a mapping"),
    ("name: x\n", "'steps' must be a non-empty list"),
    ("name: x\nsteps: []\n", "'steps' must be a non-empty list"),
])
def test_a_file_that_is_not_a_workflow_is_refused_with_exit_2(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    with pytest.raises(WorkflowFileError, match=says):
        load_pipeline(path)
    result = CliRunner().invoke(cli, ["workflow", "run", str(path), "--wait"], env=ENV)
    assert result.exit_code == 2 and says in result.output, result.output


def test_the_commands_are_documented() -> None:
    result = CliRunner().invoke(cli, ["workflow", "--help"])
    assert result.exit_code == 0
    for command in ("run", "status", "list", "start", "pause", "resume", "cancel", "cleanup"):
        assert command in result.output
    run = CliRunner().invoke(cli, ["workflow", "run", "--help"])
    assert "--wait" in run.output and "--json" in run.output and "Exit codes" in run.output
