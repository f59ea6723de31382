"""``computectl dev``: start, inspect and stop the local stack (Kafka, PostgreSQL, S3).

    eval "$(computectl dev up)"     # start detached, export the endpoints
    computectl dev status
    computectl dev down             # stop all of it; no process is left behind
    computectl dev run -- pytest    # start, run one command with the endpoints, stop
    computectl dev up --brokers 3   # a three-node KRaft cluster (topics RF 3, min ISR 2)
    computectl dev restart kafka    # faults on the same data: restart, stop/start [--node N],
                                    # freeze/thaw (control.py)

``computectl up`` / ``ps`` / ``logs`` / ``down`` (devstack/system_cli.py) add the services.

``up`` starts every process in a session of its own so that it outlives the CLI and records
pids, ports and temp dirs in ``<repo>/.cache/devstack/state.json`` (``--state-dir`` or
``COMPUTE_DEVSTACK_STATE_DIR`` move it); ``down`` and ``status`` read that file.
Also runnable as ``python -m devstack.cli``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click

from devstack.control import COMMANDS as fault_commands
from devstack.kafka import default_repo_root
from devstack.procs import DevStackError, pid_alive, process_group_members
from devstack.records import (
    STATE_FILE,
    alive,
    read_state,
    recorded_pids,
    state_path,
    write_state,
)
from devstack.stack import LocalStack

__all__ = ["STATE_FILE", "default_state_dir", "dev", "running_stack", "start_detached"]


def default_state_dir() -> Path:
    return default_repo_root() / ".cache" / "devstack"


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt for the duration, so the cleanup paths run."""

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the cleanup finish
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _state_path(state_dir: Path) -> Path:
    return state_path(state_dir)


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        return read_state(state_dir)
    except DevStackError as exc:
        raise click.ClickException(str(exc)) from exc


def _write_state(state_dir: Path, state: dict[str, Any]) -> None:
    write_state(state_dir, state)


def _recorded_pids(state: dict[str, Any]) -> dict[str, tuple[int, int | None]]:
    return recorded_pids(state)


def _alive(state: dict[str, Any]) -> dict[str, bool]:
    return alive(state)


def print_env(env: dict[str, str], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(env, indent=2, sort_keys=True))
    else:
        for key, value in env.items():
            click.echo(f"export {key}={shlex.quote(value)}")


def _stop_from_state(state: dict[str, Any]) -> list[str]:
    """Stop what ``state`` records; returns a problem per process still found afterwards."""
    stack = LocalStack.from_state(state)
    problems: list[str] = []
    try:
        stack.stop()
    except DevStackError as exc:
        problems.append(str(exc))
    for name, (pid, ticks) in _recorded_pids(state).items():
        if pid_alive(pid, ticks) or process_group_members(pid):
            problems.append(f"{name} (pid {pid}) is still running")
    return problems


state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    envvar="COMPUTE_DEVSTACK_STATE_DIR",
    show_envvar=True,
    help="Where the state file of a detached stack lives [default: <repo>/.cache/devstack].",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of shell lines.")
component_options = [
    click.option("--kafka/--no-kafka", default=True, show_default=True, help="Start the Kafka broker."),
    click.option("--postgres/--no-postgres", default=True, show_default=True, help="Start PostgreSQL."),
    click.option("--s3/--no-s3", default=True, show_default=True, help="Start the S3 endpoint (moto)."),
    click.option("--brokers", type=click.IntRange(1, 9), default=1, show_default=True,
                 help="Kafka nodes: 3 starts a KRaft cluster (topics RF 3, min ISR 2)."),
    click.option("--timeout", type=float, default=120.0, show_default=True,
                 help="Seconds each component may take to answer."),
]


def with_component_options(fn: Any) -> Any:
    for option in reversed(component_options):
        fn = option(fn)
    return fn


@click.group(name="dev")
def dev() -> None:
    """Run the local stack with no Docker: a Kafka broker (KRaft, JVM), a throw-away
    PostgreSQL cluster, an S3 endpoint (moto) and a file:// results folder."""


@dev.command()
@with_component_options
@state_dir_option
@json_option
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for RESULTS_URL (kept by `down`) [default: a temp folder `down` removes].")
def up(kafka: bool, postgres: bool, s3: bool, brokers: int, timeout: float, state_dir: Path | None,
       as_json: bool, results_dir: Path | None) -> None:
    """Start the stack detached and print its endpoints as `export KEY=VALUE` lines.

    The processes outlive this command; stop them with `computectl dev down`.
    Use it as: eval "$(computectl dev up)".
    """
    env = start_detached(state_dir or default_state_dir(), kafka=kafka, postgres=postgres, s3=s3,
                         timeout=timeout, results_dir=results_dir, brokers=brokers)
    print_env(env, as_json)


def start_detached(state_dir: Path, *, kafka: bool = True, postgres: bool = True, s3: bool = True,
                   timeout: float = 120.0, results_dir: Path | None = None,
                   brokers: int = 1) -> dict[str, str]:
    """Start the stack detached, recorded in ``state_dir``; return its endpoints (``dev up``)."""
    previous = _read_state(state_dir)
    if previous is not None:
        if any(_alive(previous).values()):
            raise click.ClickException(
                f"a local stack is already up (see {_state_path(state_dir)}); run `computectl dev down` first"
            )
        _stop_from_state(previous)  # stale: clean its temp dirs
        _state_path(state_dir).unlink(missing_ok=True)
    stack = LocalStack(kafka=kafka, postgres=postgres, s3=s3, detached=True, results_dir=results_dir,
                       brokers=brokers)
    try:
        with sigterm_as_interrupt():
            stack.start(timeout=timeout, on_launched=lambda s: _write_state(state_dir, s.to_state()))
            _write_state(state_dir, stack.to_state())
    except (DevStackError, KeyboardInterrupt) as exc:
        _state_path(state_dir).unlink(missing_ok=True)
        raise click.ClickException(str(exc) or "interrupted") from exc
    return stack.env()


def running_stack(state_dir: Path) -> dict[str, Any] | None:
    """The state of the detached stack when every component of it is alive; None when none is
    up; ClickException when only part of it is."""
    state = _read_state(state_dir)
    if state is None:
        return None
    alive = _alive(state)
    if alive and all(alive.values()):
        return state
    if any(alive.values()):
        dead = ", ".join(name for name, ok in alive.items() if not ok)
        raise click.ClickException(f"the local stack is only partly up ({dead} gone); run "
                                   "`computectl down` first")
    return None


@dev.command()
@state_dir_option
def down(state_dir: Path | None) -> None:
    """Stop every process `up` or `dev up` started (the services first, then the stack), wait
    until each is gone, remove the temp dirs. The services' logs stay."""
    from devstack.system import stop_services

    state_dir = state_dir or default_state_dir()
    with sigterm_as_interrupt():
        problems = stop_services(state_dir)
    if problems:
        raise click.ClickException("; ".join(problems))
    state = _read_state(state_dir)
    if state is None:
        click.echo("no local stack is up", err=True)
        return
    with sigterm_as_interrupt():
        problems = _stop_from_state(state)
    if problems:
        raise click.ClickException("; ".join(problems))
    _state_path(state_dir).unlink(missing_ok=True)
    stopped = ", ".join(f"{name} (pid {pid})" for name, (pid, _) in _recorded_pids(state).items())
    click.echo(f"stopped {stopped or 'nothing'}", err=True)


@dev.command()
@state_dir_option
@json_option
def status(state_dir: Path | None, as_json: bool) -> None:
    """Say whether each component of the detached stack is alive and answering.

    Exits 0 when all are, 1 otherwise (also when no stack is up).
    """
    state_dir = state_dir or default_state_dir()
    state = _read_state(state_dir)
    if state is None:
        if as_json:
            click.echo(json.dumps({"up": False, "components": {}}))
        else:
            click.echo("no local stack is up")
        sys.exit(1)
    report = LocalStack.from_state(state).status()
    ok = bool(report) and all(r["alive"] and r["answering"] for r in report.values())
    if as_json:
        click.echo(json.dumps({"up": ok, "components": report, "env": state.get("env", {})}, indent=2))
    else:
        for name, r in report.items():
            what = "answering" if r["answering"] else (
                "FROZEN" if r["frozen"] else "alive, not answering" if r["alive"]
                else "STOPPED" if r["pid"] is None else "DEAD")
            click.echo(f"{name:9} pid {r['pid'] or '-'!s:<8} {what}")
    sys.exit(0 if ok else 1)


@dev.command()
@state_dir_option
@json_option
def env(state_dir: Path | None, as_json: bool) -> None:
    """Print the endpoints of the stack that is up, as `dev up` did; with the services of
    `computectl up` running, also COMPUTE_API_URL and COMPUTE_API_KEY."""
    from devstack.system import api_exports

    state_dir = state_dir or default_state_dir()
    state = _read_state(state_dir)
    if state is None:
        raise click.ClickException("no local stack is up; run `computectl dev up`")
    print_env({**state.get("env", {}), **api_exports(state_dir)}, as_json)


@dev.command(context_settings={"ignore_unknown_options": True})
@with_component_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(kafka: bool, postgres: bool, s3: bool, brokers: int, timeout: float, command: tuple[str, ...]) -> None:
    """Start the stack, run COMMAND with its endpoints in the environment, stop the stack.

    Exits with COMMAND's exit status. Example: computectl dev run -- pytest -q
    """
    stack = LocalStack(kafka=kafka, postgres=postgres, s3=s3, brokers=brokers)
    code = 1
    with sigterm_as_interrupt():
        try:
            try:
                stack.start(timeout=timeout)
            except DevStackError as exc:
                raise click.ClickException(str(exc)) from exc
            child = subprocess.Popen(list(command), env={**os.environ, **stack.env()})
            try:
                code = child.wait()
            except KeyboardInterrupt:
                child.terminate()
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                code = 130
        except KeyboardInterrupt:
            code = 130
        finally:
            stack.stop()
    sys.exit(code)


for _command in fault_commands:
    dev.add_command(_command)


def main() -> None:
    dev(prog_name="computectl dev")


if __name__ == "__main__":
    main()
