"""``computectl up`` / ``ps`` / ``logs`` (``down`` is ``dev down``): the whole system with one
command, supervised.

    eval "$(computectl up)"          # stack + topics + tables + key + services; exports
    computectl ps                    # each service: pid, state, restarts, uptime, log
    computectl logs worker --follow  # one service's log (all of them without a name)
    computectl down                  # the services, then the stack; nothing left running

See docs/LOCAL_STACK.md, "The whole system with one command".
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import click

from devstack.cli import (
    default_state_dir,
    print_env,
    running_stack,
    sigterm_as_interrupt,
    start_detached,
    state_dir_option,
)
from devstack.procs import DevStackError, free_port, pid_alive, tail
from devstack.services import supervisor_alive
from devstack.system import (
    SystemFiles,
    api_exports,
    ensure_key,
    service_specs,
    services_env,
    stack_kafka_settings,
    start_supervisor,
    stop_services,
    wait_ready,
)
from schemas.enums import TaskType

_FOLLOW_POLL_S = 0.25


def _parse_types(text: str) -> list[TaskType]:
    if text.strip().lower() == "all":
        return list(TaskType)
    try:
        types = [TaskType.parse(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--types") from None
    if not types:
        raise click.BadParameter("name at least one task type, or all", param_hint="--types")
    return list(dict.fromkeys(types))


@click.command("up")
@click.option("--types", "types_text", default="all", show_default=True, metavar="TYPE,TYPE|all",
              help="Task types the worker(s) serve (generation,image_adjuster,...).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes, each serving every type of --types (one consumer group "
                   "per type: they share its partitions).")
@click.option("--tenant", default="local", show_default=True,
              help="The tenant of the API key `up` creates (once; a second `up` prints it again).")
@click.option("--timeout", type=float, default=180.0, show_default=True,
              help="Seconds the stack, then the API, may take to answer.")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for RESULTS_URL, kept by `down` (when `up` starts the stack) "
                   "[default: a temp folder `down` removes].")
@click.option("--brokers", type=click.IntRange(1, 9), default=1, show_default=True,
              help="Kafka nodes when `up` starts the stack: 3 is a KRaft cluster (topics RF 3, "
                   "min ISR 2), as `computectl dev up --brokers 3`.")
@state_dir_option
def up(types_text: str, workers: int, tenant: str, timeout: float, results_dir: Path | None,
       brokers: int, state_dir: Path | None) -> None:
    """Start the local stack (if it is not up), create the topics, migrate the database, create
    an API key, and start the services detached under a supervisor: the worker(s), the
    processors, the projector and the API (on a free port). Returns once the API is ready, and
    prints `export` lines on stdout: the stack's endpoints, COMPUTE_API_URL and COMPUTE_API_KEY.

    Use it as: eval "$(computectl up)". A second `up` while it runs prints the same lines.
    A service that exits is restarted (`computectl ps` shows the restarts); `computectl logs`
    shows their output; `computectl down` stops everything.
    """
    types = _parse_types(types_text)
    state_dir = state_dir or default_state_dir()
    files = SystemFiles(state_dir)
    try:
        with sigterm_as_interrupt():
            exports = _up(files, types, workers, tenant, timeout, results_dir, brokers)
    except DevStackError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        raise click.ClickException("interrupted; `computectl down` stops what was started") from None
    print_env(exports, as_json=False)


def _up(files: SystemFiles, types: list[TaskType], workers: int, tenant: str, timeout: float,
        results_dir: Path | None, brokers: int = 1) -> dict[str, str]:
    stack = running_stack(files.state_dir)
    state = files.state()
    if stack is not None and supervisor_alive(state):
        click.echo(f"already up (types {','.join(state['types'])}, {state['workers']} worker(s), "
                   f"tenant {state['tenant']}); `computectl down` first to change them", err=True)
        return {**stack["env"], **api_exports(files.state_dir)}  # sorted, as the first time
    if stack is None:
        problems = stop_services(files.state_dir)  # a supervisor whose stack has gone
        if problems:
            raise DevStackError("; ".join(problems))
        click.echo("starting the local stack (Kafka, PostgreSQL, S3)...", err=True)
        env = start_detached(files.state_dir, timeout=timeout, results_dir=results_dir, brokers=brokers)
    else:
        env = stack["env"]
    missing = {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"} - set(env)
    if missing:
        raise DevStackError(f"the stack that is up has no {', '.join(sorted(missing))}; "
                            "`computectl down`, then `computectl up`")
    key = _prepare(files, env, tenant)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    pid = start_supervisor(files, service_specs(types, workers, port), services_env(env, files),
                           api_url=api_url, extra={"tenant": tenant, "workers": workers,
                                                   "types": [t.slug for t in types]})
    click.echo(f"services starting under supervisor pid {pid} (logs: {files.logs}); waiting for "
               f"the API at {api_url}...", err=True)
    try:
        wait_ready(files, pid, api_url, timeout)
    except BaseException:
        stop_services(files.state_dir)
        raise
    click.echo(f"up: {', '.join(files.state()['services'])}; `computectl ps`, `computectl logs`,"
               " `computectl down`", err=True)
    from api.console.link import console_login_line  # the web console (docs/CONSOLE.md)
    click.echo(console_login_line(api_url, key), err=True)
    return {**dict(sorted(env.items())), "COMPUTE_API_URL": api_url, "COMPUTE_API_KEY": key}


def _prepare(files: SystemFiles, env: dict[str, str], tenant: str) -> str:
    """The topics (idempotent), the migrations (idempotent), the tenant's key (once)."""
    from projection.db.migrate import migrate
    from schemas.topic_admin import ensure_topics

    report = ensure_topics(stack_kafka_settings(env))
    applied = migrate(env["DATABASE_URL"])
    click.echo(f"topics: {len(report.created)} created, {len(report.existing)} there; "
               f"migrations: {len(applied)} applied", err=True)
    return ensure_key(files, env["DATABASE_URL"], tenant)


# --------------------------------------------------------------------------- ps

def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def _service_rows(state: dict[str, Any], sup_alive: bool) -> dict[str, dict[str, Any]]:
    rows = {}
    now = time.time()
    for name, s in state.get("services", {}).items():
        alive = bool(s.get("pid")) and pid_alive(s["pid"], s.get("start_ticks"))
        shown = s["state"] if sup_alive else ("orphaned" if alive else "gone")
        if shown == "running" and not alive:
            shown = "exited"  # noticed by the supervisor within a moment
        if shown in ("failed", "backoff") and s.get("last_exit") is not None:
            shown += f" (last exit {s['last_exit']})"
        rows[name] = {**s, "state": shown, "alive": alive,
                      "uptime_s": now - s["started_at"] if alive and s.get("started_at") else None}
    return rows


@click.command("ps")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@state_dir_option
def ps(as_json: bool, state_dir: Path | None) -> None:
    """Show each service that `computectl up` runs: pid, state, restarts, uptime, log file.

    Exits 0 when every service runs, 1 otherwise (also when `up` has not run). A service that
    exited more than 5 times within a minute is `failed`: the supervisor leaves it down
    (`computectl logs SERVICE` says why; `down` and `up` start afresh).
    """
    state = SystemFiles(state_dir or default_state_dir()).state()
    sup_alive = supervisor_alive(state)
    rows = _service_rows(state, sup_alive) if state else {}
    ok = sup_alive and bool(rows) and all(r["state"] == "running" and r["alive"]
                                          for r in rows.values())
    if as_json:
        click.echo(json.dumps({"up": ok, "supervisor": {**(state or {}).get("supervisor", {}),
                                                        "alive": sup_alive},
                               "api_url": (state or {}).get("api_url"), "services": rows},
                              indent=2))
    elif state is None:
        click.echo("no services are up; `computectl up` starts them")
    else:
        sup = state["supervisor"]
        click.echo(f"supervisor pid {sup['pid']} " + (
            f"{sup['state']}, up {_duration(time.time() - sup['started_at'])}" if sup_alive
            else "NOT RUNNING (`computectl down`, then `computectl up`)")
                   + f"; API {state.get('api_url')}")
        click.echo(f"{'SERVICE':<12} {'PID':<8} {'STATE':<22} {'RESTARTS':<9} {'UPTIME':<8} LOG")
        for name, r in rows.items():
            uptime = _duration(r["uptime_s"]) if r["uptime_s"] is not None else "-"
            click.echo(f"{name:<12} {r['pid'] or '-':<8} {r['state']:<22} {r['restarts']:<9} "
                       f"{uptime:<8} {r['log']}")
    raise SystemExit(0 if ok else 1)


# --------------------------------------------------------------------------- logs

def _matching(logs_dir: Path, service: str | None) -> list[Path]:
    found = sorted(logs_dir.glob("*.log"))
    return [p for p in found if service is None or p.stem == service
            or (service == "worker" and p.stem.startswith("worker-"))]


def _log_files(logs_dir: Path, service: str | None) -> list[Path]:
    chosen = _matching(logs_dir, service)
    if not chosen:
        known = ", ".join(p.stem for p in _matching(logs_dir, None))
        raise click.BadParameter(f"no log for {service or 'any service'!r} in {logs_dir}; "
                                 f"there are: {known or 'none (has `computectl up` run?)'}",
                                 param_hint="SERVICE")
    return chosen


class _Follower:
    """New complete lines of a log since the last read; starts over when the file is replaced
    (a new `up`) or shortened."""

    def __init__(self, path: Path, *, from_start: bool) -> None:
        self.path, self.pos, self.inode, self.rest = path, 0, None, b""
        if not from_start:
            try:
                st = path.stat()
                self.pos, self.inode = st.st_size, st.st_ino
            except FileNotFoundError:
                pass

    def lines(self) -> list[str]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        if st.st_ino != self.inode or st.st_size < self.pos:
            self.pos, self.inode, self.rest = 0, st.st_ino, b""
        if st.st_size == self.pos:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        self.pos += len(data)
        *complete, self.rest = (self.rest + data).split(b"\n")
        return [line.decode("utf-8", errors="replace") for line in complete]


@click.command("logs")
@click.argument("service", required=False)
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing new lines until Ctrl-C (never ends on its own).")
@click.option("--lines", "-n", type=click.IntRange(min=0), default=50, show_default=True,
              help="Lines to show first, from the end of each log.")
@state_dir_option
def logs(service: str | None, follow: bool, lines: int, state_dir: Path | None) -> None:
    """Show the logs of the services `computectl up` runs: SERVICE is worker (all workers),
    worker-N, processors, projector, api or supervisor; all of them without it, each line then
    prefixed with its service. The logs are in <state dir>/logs (kept by `down`, replaced by
    the next `up`); the supervisor notes each start, exit and restart in them."""
    logs_dir = SystemFiles(state_dir or default_state_dir()).logs
    paths = _log_files(logs_dir, service)
    prefix = len(paths) > 1 or service is None

    def show(path: Path, text: str) -> None:
        click.echo(f"{path.stem:<10} | {text}" if prefix else text)

    # From the end as it is now, so nothing is shown twice; a log that appears later (a new
    # `up`) is followed from its start.
    followers = {p: _Follower(p, from_start=False) for p in paths}
    for path in paths:
        if lines:
            for line in tail(path, lines).splitlines():
                show(path, line)
    if not follow:
        return
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the way out: not an error
        while True:
            for path in _matching(logs_dir, service):
                follower = followers.setdefault(path, _Follower(path, from_start=True))
                for line in follower.lines():
                    show(path, line)
            time.sleep(_FOLLOW_POLL_S)
