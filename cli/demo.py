"""``computectl demo``: the main flow on the embedded local stack, start to clean stop.

Start Kafka, PostgreSQL and the S3 endpoint; create the topics; write tiny input images; start
the real system beside them as child processes (``cli/demo_children.py``): one
``computectl worker`` for all ten types (offline model profile, models cached in
``.cache/models``), ``computectl processors`` (the Faust app) and ``computectl api`` with its
embedded projector, on a free port. Create an API key for a demo tenant and submit one task of
each type THROUGH the API; read every task back from its per-type topic with an independent
Kafka reader; show that a repeated Idempotency-Key is the same task and that a bad task is
refused. Wait, polling ``GET /api/v1/tasks/{id}``, until every task has ended; show each task's
status history from its event stream, and the processors' folded state from the state topic.
Then one AGENTIC generation and one four-step workflow (examples/fashion_pipeline.yaml: each
step's input is its parent's result), each followed to its end through the API.
End with the API URL, a ready-made ``curl`` and the final state of every task as the API serves
it; then stop the children (SIGTERM) and the stack. Results are kept in ``.cache/demo-results``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from pathlib import Path

import click
import httpx
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.demo_children import Children
from cli.demo_generation import run_generation
from cli.demo_tasks import demo_tasks
from cli.demo_workflow import run_workflow
from cli.tail import tail
from devstack.procs import free_port
from schemas.codec import EventCodec
from schemas.enums import TaskType
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics

# A record written a moment ago is readable within well under a second on a local broker; the
# reader stops once it has them all, this is only the bound.
_READ_IDLE_TIMEOUT_S = 10.0
_REPO = Path(__file__).resolve().parents[1]
_RESULTS = _REPO / ".cache" / "demo-results"  # kept after the demo, for a look at the outputs
_WORKER_GROUPS = "demo-workers"  # WORKER_GROUP_PREFIX of the demo's worker
_TENANT = "demo"
_IDEMPOTENCY_KEY = "demo-order-1"  # carried by the LLM task, then repeated
# Starting the API is a few seconds of imports, migrations and Kafka clients; on a loaded CI
# machine it can be many more. Past this, the demo fails with the API's log.
_API_READY_DEADLINE_S = 90.0
# Submission to the last task ending: the worker's start (torch), first-run model builds (later
# runs load them from .cache/models), ten tasks. A task not ended by then is shown as it stands.
_TASKS_DEADLINE_S = 150.0
_POLL_S = 0.25
# The processors write a task's folded state within one batch (50 ms) of its status event; the
# bound only matters when they are broken.
_STATE_TOPIC_DEADLINE_S = 15.0


@click.command()
def demo() -> None:
    """Start the local stack, run the main flow end to end, and stop everything cleanly."""
    from devstack.cli import sigterm_as_interrupt
    from devstack.stack import LocalStack

    console = Console()
    if not console.is_terminal:  # a log has no width: keep ids, URLs and the curl on one line
        console.width = 200
    console.rule("Compute Server demo")
    with sigterm_as_interrupt():
        with console.status("starting Kafka (KRaft), PostgreSQL and the S3 endpoint..."):
            stack = LocalStack().start()
        _run_on(stack, console)


def _run_on(stack, console: Console) -> None:
    children = None
    try:
        console.print(f"local stack up in {stack.start_seconds:.1f}s:")
        for key, value in stack.env().items():
            if not key.startswith("AWS_"):
                console.print(f"  {key}={value}")
        settings = KafkaSettings(bootstrap_servers=stack.kafka.bootstrap_servers)
        report = ensure_topics(settings)
        console.print(f"topics: {len(report.created)} created, {len(report.existing)} already there")
        tasks = demo_tasks(stack.inputs_dir)  # the stack's INPUT_ALLOWED_FILE_ROOTS
        workdir = stack.results_dir / "processes"  # under the stack's folder: a test finds leftovers
        workdir.mkdir()
        children = Children(_children_env(stack, settings, workdir), workdir)
        api_url = _start_children(children, console)
        run_flow(stack, settings, children, api_url, tasks, console)
    finally:
        if children is not None:
            _stop_children(children, console)
        with console.status("stopping the local stack..."):
            pids = stack.pids()
            stack.stop()
        console.print(f"stopped {len(pids)} processes; nothing left running.")


# --------------------------------------------------------------------------- the processes


def _children_env(stack, settings: KafkaSettings, workdir: Path) -> dict[str, str]:
    """The stack's endpoints (with its inputs folder, INPUT_ALLOWED_FILE_ROOTS, where the demo's
    input images are), and what makes the worker fit a demo: CPU, the offline models (built once
    into .cache/models), results kept in .cache/demo-results."""
    return {
        **os.environ, **stack.env(), "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": settings.topic_prefix, "WORKER_GROUP_PREFIX": _WORKER_GROUPS,
        # the API's queue monitoring looks at the groups this worker joins
        "COMPUTE_API_WORKER_GROUP_PREFIX": _WORKER_GROUPS, "COMPUTE_API_ORIGIN_INSTANCE": "demo",
        "PROCESSORS_DATADIR": str(workdir / "processors-data"),
        "WORKER_DEVICE": "cpu", "RESULTS_URL": _RESULTS.as_uri(), "COMPUTE_MODEL_PROFILE": "offline",
        "COMPUTE_MODEL_CACHE_DIR": str(_REPO / ".cache" / "models"),
        "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
        # Idempotency-Key ids keyed as in a deployment (docs/SECURITY.md); one demo, one secret.
        "IDEMPOTENCY_SECRET": secrets.token_hex(16),
    }


def _start_children(children: Children, console: Console) -> str:
    """The worker, the processors and the API, started together: their start-up (imports,
    Kafka group joins) overlaps instead of adding up. Returns the API's URL."""
    _RESULTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    children.start("worker", "worker", "--types", ",".join(t.slug for t in TaskType),
                   "--json", "--log-level", "WARNING")
    children.start("processors", "processors", "--no-create-topics", "--log-level", "WARNING")
    children.start("api", "api", "--port", str(port), "--embedded-projector")
    for name, child in children.started.items():
        console.print(f"{name}: pid {child.proc.pid} (log: {child.log})")
    return f"http://127.0.0.1:{port}"


def _stop_children(children: Children, console: Console) -> None:
    with console.status("stopping the worker, the processors and the API (SIGTERM)..."):
        codes = children.stop()
    counters = children.started["worker"].last_json_line() if "worker" in children.started else None
    # Their folder goes with the stack; the logs are worth keeping, a failed run most of all.
    logs = _RESULTS / "_logs"  # '_': no tenant's segment (a tenant "logs" would own "logs")
    logs.mkdir(parents=True, exist_ok=True)
    for child in children.started.values():
        shutil.copyfile(child.log, logs / child.log.name)
    console.print("stopped: " + ", ".join(f"{n} ({how})" for n, how in codes.items())
                  + f"; their logs are in {logs}")
    if counters:
        console.print(f"worker counters: {counters}")


# --------------------------------------------------------------------------- the main flow


def run_flow(stack, settings: KafkaSettings, children: Children, api_url: str,
             tasks: dict[TaskType, dict], console: Console) -> None:
    from projection.db.apikeys import create_key
    from projection.db.migrate import migrate

    # The API migrates too when it starts; both are safe at once (an advisory lock).
    migrate(stack.postgres.url)
    key, record = create_key(stack.postgres.url, _TENANT, name="computectl demo")
    console.print(f"API key {record.key_id} for tenant {_TENANT!r} (computectl apikey create)")
    api = httpx.Client(base_url=api_url, timeout=httpx.Timeout(10.0, read=30.0),
                       headers={"Authorization": f"Bearer {key}"})
    with api:
        _wait_api_ready(api, api_url, children, console)
        ids = _submit(api, tasks, console)
        _show_tasks(settings, ids, console)
        _show_idempotency_and_refusal(api, tasks, ids, console)
        started = time.monotonic()
        final = _wait_ended(api, ids, children, console)
        done = sum(1 for t in final.values() if t.get("status") == "COMPLETED")
        console.print(f"tasks: {done} of {len(ids)} COMPLETED, "
                      f"{time.monotonic() - started:.1f}s after submission; results in {_RESULTS} "
                      "(the offline models have random weights, so the images are noise and the "
                      "text is gibberish: what runs is the real code path)")
        if children.died("api") is None:
            _show_histories(api, ids, final, console)
        if children.died("processors") is None:
            _show_processor_states(settings, ids, console)
        else:
            console.print("processors: exited; the reason ends this demo's output")
        generation = workflow = None
        if children.died() is None:
            generation = run_generation(api, console, children.died)
        if children.died() is None:
            workflow = run_workflow(api, console, children.died)
        _show_final(api_url, key, ids, final, console)
        # The web console (docs/CONSOLE.md): good while this demo's stack runs. At a terminal the
        # demo holds the stack until Enter, so the link can be opened; with no terminal (CI, a
        # log) it stops at once. `computectl up` keeps a stack up and prints a fresh link.
        from api.console.link import console_login_line
        console.print(console_login_line(api_url, key) + "  (until the demo stops its stack; "
                      "`computectl up` keeps one running)", markup=False, highlight=False, soft_wrap=True)
        if sys.stdin.isatty() and sys.stdout.isatty():
            console.input("the stack stays up for the console: press Enter to stop it ")
    # Shown everything first: the tables say what went wrong as much as the exit status does.
    why = children.died()
    if why is not None or done < len(ids):
        raise click.ClickException(why or f"only {done} of {len(ids)} tasks COMPLETED")
    if generation is None or generation["status"] != "COMPLETED":
        raise click.ClickException(f"the generation ended {generation and generation['status']}")
    if workflow is None or workflow["status"] != "COMPLETED":
        raise click.ClickException(f"the workflow ended {workflow and workflow['status']}"
                                   + (f": {workflow['message']}" if workflow and workflow["message"] else ""))


def _wait_api_ready(api: httpx.Client, api_url: str, children: Children,
                    console: Console) -> None:
    deadline = time.monotonic() + _API_READY_DEADLINE_S
    with console.status(f"waiting for the API at {api_url} to be ready..."):
        while True:
            try:
                if api.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            why = children.died()
            if why is not None:
                raise click.ClickException(why)
            if time.monotonic() > deadline:
                raise click.ClickException(
                    f"the API was not ready within {_API_READY_DEADLINE_S:.0f}s; the end of its "
                    "log:\n" + children.started["api"].log_tail())
            time.sleep(_POLL_S)


def _submit(api: httpx.Client, tasks: dict[TaskType, dict], console: Console) -> dict[TaskType, str]:
    """POST one task of each type; the LLM one carries an Idempotency-Key."""
    ids: dict[TaskType, str] = {}
    with Progress(console=console) as progress:
        bar = progress.add_task("POST /api/v1/tasks, one task of each type", total=len(tasks))
        for task_type, params in tasks.items():
            ids[task_type] = _post(api, task_type, params)["task_id"]
            progress.advance(bar)
    return ids


def _post(api: httpx.Client, task_type: TaskType, params: dict) -> dict:
    headers = {"Idempotency-Key": _IDEMPOTENCY_KEY} if task_type is TaskType.LLM_INTERACTION else {}
    resp = api.post("/api/v1/tasks", json={"task_type": task_type.value, **params}, headers=headers)
    if resp.status_code != 202:
        raise click.ClickException(f"POST {task_type.value}: {resp.status_code} {resp.text[:500]}")
    return resp.json()


def _show_tasks(settings: KafkaSettings, ids: dict[TaskType, str], console: Console) -> None:
    codec = EventCodec()
    table = Table(title="tasks read back from their per-type topics (independent reader)")
    for column in ("type", "task id", "offset", "tenant", "parameters"):
        table.add_column(column, no_wrap=column != "parameters")
    for task_type, task_id in ids.items():
        topic = settings.topics.task(task_type)
        [record] = list(tail(settings, topic, codec=codec, from_beginning=True, max_records=1,
                             idle_timeout_s=_READ_IDLE_TIMEOUT_S))
        assert record["key"] == task_id, (record["key"], task_id)
        value = record["value"]
        params = [k for k, v in value["params"].items() if v not in (None, [])]
        table.add_row(task_type.value, task_id, str(record["offset"]),
                      str(value["envelope"].get("origin_tenant_id")), ", ".join(params))
    console.print(table)


def _show_idempotency_and_refusal(api: httpx.Client, tasks: dict[TaskType, dict],
                                  ids: dict[TaskType, str], console: Console) -> None:
    console.rule("idempotency")
    llm = TaskType.LLM_INTERACTION
    again = _post(api, llm, tasks[llm])
    same = again["task_id"] == ids[llm]
    console.print(f"Idempotency-Key {_IDEMPOTENCY_KEY!r} twice -> {ids[llm]} and "
                  f"{again['task_id']}: {'the same task' if same else 'DIFFERENT (bug)'}, "
                  f"idempotent_replay={again['idempotent_replay']}: nothing queued again")
    console.rule("bad input")
    resp = api.post("/api/v1/tasks", json={"task_type": "GENERATION", "prompt": "a dress",
                                           "style_lora_weight": 1.7})
    if resp.status_code == 422:
        console.print(f"refused, nothing produced: 422 {resp.json()['detail']}", markup=False)
    else:
        console.print(f"NOT refused (bug): {resp.status_code} {resp.text[:300]}", markup=False)


def _ended(task: dict) -> bool:
    """No further status to come: COMPLETED, FAILED or CANCELLED (all final; a retry is QUEUED
    for the next attempt), the rule of the API's event stream."""
    return task.get("status") in ("COMPLETED", "FAILED", "CANCELLED")


def _wait_ended(api: httpx.Client, ids: dict[TaskType, str], children: Children,
                console: Console) -> dict[str, dict]:
    """Poll GET /api/v1/tasks/{id} until every task has ended, a child died, or the deadline.
    Right after the 202 a task can still be a 404: the read model is eventually consistent."""
    latest: dict[str, dict] = {}
    deadline = time.monotonic() + _TASKS_DEADLINE_S
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("waiting for the tasks to end", total=len(ids))
        while True:
            for task_id in ids.values():
                if task_id not in latest or not _ended(latest[task_id]):
                    try:
                        resp = api.get(f"/api/v1/tasks/{task_id}")
                    except httpx.TransportError:
                        break  # the API is gone: told just below
                    if resp.status_code == 200:
                        latest[task_id] = resp.json()
            ended = sum(1 for t in latest.values() if _ended(t))
            counts: dict[str, int] = {}
            for t in latest.values():
                counts[t["status"]] = counts.get(t["status"], 0) + 1
            progress.update(bar, completed=ended, description="tasks: " + ", ".join(
                f"{n} {s}" for s, n in sorted(counts.items())))
            if ended == len(ids):
                break
            # Without a worker or the API (and its projector) nothing moves any more; the tasks
            # do not need the processors to end, so a crash there is reported at the end.
            why = children.died("worker", "api")
            if why is not None or time.monotonic() > deadline:
                console.print(why or f"not all tasks ended within {_TASKS_DEADLINE_S:.0f}s; "
                              "shown as they stand", markup=False)
                break
            time.sleep(_POLL_S)
    return latest


def _show_histories(api: httpx.Client, ids: dict[TaskType, str], final: dict[str, dict],
                    console: Console) -> None:
    """Each ended task's status events, from GET /tasks/{id}/events (the server-sent event
    stream sends the stored events, then `end`, and closes). Progress reports repeat
    PROCESSING; one is shown."""
    from cli.follow import iter_events

    table = Table(title="status events of each task (GET /api/v1/tasks/{id}/events)")
    for column in ("type", "task id", "statuses, in order"):
        table.add_column(column, no_wrap=True)
    for task_type, task_id in ids.items():
        statuses: list[str] = []
        if task_id in final and _ended(final[task_id]):
            for frame in iter_events(api, task_id):
                status = frame.get("data", {}).get("status") if frame.get("event") == "status" else None
                if status and (not statuses or statuses[-1] != status):
                    statuses.append(status)
        table.add_row(task_type.value, task_id, " → ".join(statuses) or "(not ended)")
    console.print(table)


def _show_processor_states(settings: KafkaSettings, ids: dict[TaskType, str],
                           console: Console) -> None:
    """The processors' view: each task's latest folded state on the compacted state topic."""
    from processors.folding import decode_state

    topic, wanted = settings.topics.state, set(ids.values())
    states: dict[str, str] = {}
    consumer = Consumer({**settings.client_config(), "group.id": "demo-state-reader",
                         "enable.auto.commit": False})
    deadline = time.monotonic() + _STATE_TOPIC_DEADLINE_S
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        while time.monotonic() < deadline and not (
                len(states) == len(wanted) and set(states.values()) <= {"COMPLETED", "FAILED",
                                                                          "CANCELLED"}):
            msg = consumer.poll(0.2)
            if msg is None or msg.error() or (msg.key() or b"").decode() not in wanted:
                continue
            state = decode_state(msg.value())
            if state is not None:
                states[state.task_id] = state.status.value
    finally:
        consumer.close()
    counts = {s: list(states.values()).count(s) for s in sorted(set(states.values()))}
    console.print(f"processors: {len(states)} of {len(wanted)} tasks folded on {topic}: {counts}")


def _show_final(api_url: str, key: str, ids: dict[TaskType, str], final: dict[str, dict],
                console: Console) -> None:
    console.rule("the API")
    one = ids[TaskType.GENERATION]
    console.print(f"API: {api_url}  (OpenAPI: {api_url}/api/v1/docs)", markup=False)
    console.print(f"for computectl status / tasks: export COMPUTE_API_URL={api_url} "
                  f"COMPUTE_API_KEY={key}", markup=False, highlight=False, soft_wrap=True)
    console.print("one task, ready to paste:")
    console.print(f"curl -s -H 'Authorization: Bearer {key}' {api_url}/api/v1/tasks/{one}",
                  markup=False, highlight=False, soft_wrap=True)
    table = Table(title="every demo task's final state, from GET /api/v1/tasks/{id}")
    for column in ("type", "task id", "status", "attempt", "duration", "result or error"):
        table.add_column(column, no_wrap=column != "result or error", overflow="fold")
    for task_type, task_id in ids.items():
        task = final.get(task_id)
        if task is None:
            table.add_row(task_type.value, task_id, "(not in the read model)", "", "", "")
            continue
        duration = "" if task["duration_ms"] is None else f"{task['duration_ms'] / 1000:.2f}s"
        table.add_row(task_type.value, task_id, task["status"], str(task["attempt"]), duration,
                      _outcome(task))
    console.print(table)


def _outcome(task: dict) -> str:
    result, error = task.get("result"), task.get("error")
    if result:
        if result.get("result_text") is not None:
            return "text: " + repr(result["result_text"][:60])
        return "\n".join(result.get("output_urls") or [])
    if error:
        return f"{error['code']}: {(error.get('message') or '')[:160]}"
    return ""
