"""The demo's generation: a catalog subject, one AGENTIC GENERATE request through the API, and
its quality loop followed to the end (every attempt with its score and the decision).

The offline models draw noise, and the weight-free ``quality`` evaluator says so ("noisy"): what
the demo shows is the real loop working. The processors submit each attempt, the evaluator scores
it, a score under the threshold makes a new attempt with changed parameters (attempt 2 a new seed,
attempt 3 more denoising steps and guidance, see ``generations/agentic.py``), and when no attempt
passes the best one is accepted (ACCEPT_BEST).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import click
import httpx
from rich.console import Console
from rich.table import Table

_DEADLINE_S = 180.0
# Each GET is a long poll (?wait=): it answers when the generation ends, or after this long so
# that a child process that died is noticed.
_WAIT_S = 2.0
REQUEST = {
    "shot_type_string": "full-body shot", "batch_size": 2, "width": 64, "height": 96, "seed": 7,
    "generation_type": "AGENTIC", "max_attempts": 3, "min_confidence_score": 0.7,
    "evaluation_provider": "quality",
}


def run_generation(api: httpx.Client, console: Console, died: Callable[[], str | None]) -> dict:
    """POST the generation, wait until it is done (``died`` names a child process that exited),
    show it, and return its final document from ``GET /api/v1/generations/{id}``."""
    console.rule("a generation: AGENTIC, POST /api/v1/generations")
    subject = api.post("/api/v1/catalog/subjects", json={"name": "Mara"})
    subject.raise_for_status()
    body = {**REQUEST, "subject_id": subject.json()["id"]}
    accepted = api.post("/api/v1/generations", json=body)
    if accepted.status_code != 202:
        raise click.ClickException(f"POST /api/v1/generations: {accepted.status_code} {accepted.text}")
    generation_id = accepted.json()["generation_id"]
    console.print(f"generation {generation_id}: {body['batch_size']} predictions, up to "
                  f"{body['max_attempts']} attempts each, accepted at a quality score ≥ "
                  f"{body['min_confidence_score']}")
    deadline, generation = time.monotonic() + _DEADLINE_S, None
    with console.status("the processors run the quality loop..."):
        while generation is None or generation["status"] == "RUNNING":
            if (why := died()) is not None:
                raise click.ClickException(why)
            if time.monotonic() > deadline:
                raise click.ClickException(f"generation {generation_id} not done within {_DEADLINE_S:.0f}s")
            answer = api.get(f"/api/v1/generations/{generation_id}", params={"wait": _WAIT_S})
            generation = answer.json() if answer.status_code == 200 else None  # 404: not yet seen
    _show(generation, console)
    return generation


def _show(generation: dict, console: Console) -> None:
    table = Table(title=f"generation {generation['generation_id']}: {generation['status']}")
    for column in ("prediction", "attempt", "task id", "seed", "steps", "guidance", "score", "decision",
                   "reasons"):
        table.add_column(column, overflow="fold")
    for prediction in generation["predictions"]:
        for attempt in (prediction["shot"] or {}).get("attempts", []):
            score = "" if attempt["score"] is None else f"{attempt['score']:.2f}"
            params = attempt["params"] or {}
            config = params.get("provider_config") or {}
            # ACCEPT_BEST is decided on the last attempt but accepts the best one: mark that one.
            accepted = " ✓" if attempt["task_id"] == prediction["task_id"] else ""
            table.add_row(str(prediction["index"]), f"{attempt['attempt']}{accepted}", attempt["task_id"],
                          str(params.get("seed", "")), str(config.get("num_inference_steps", "")),
                          str(config.get("guidance_scale", "")), score,
                          attempt["decision"] or attempt["status"], "; ".join(attempt["reasons"]))
    console.print(table)
    for prediction in generation["predictions"]:
        url = (prediction["result"] or {}).get("result_image_url") or (prediction["error"] or {}).get("message")
        console.print(f"prediction {prediction['index']}: {prediction['status']}  {url}", markup=False)
    console.print("✓ marks each prediction's accepted attempt")
