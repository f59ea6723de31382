"""Faults on a running local stack, on the same data and ports: ``computectl dev restart``,
``dev stop``, ``dev start``, ``dev freeze``, ``dev thaw``, and the same from Python.

They act on the stack ``computectl dev up`` (or ``computectl up``) recorded in its state
folder, and write the new pids back, so ``dev down`` stops whatever runs at the time::

    computectl dev restart kafka            # every node: SIGTERM, start on the same data
    computectl dev restart postgres --kill  # SIGKILL, start on the same data (crash recovery)
    computectl dev stop kafka --node 2      # one node of `dev up --brokers 3` down, data kept
    computectl dev start kafka --node 2     # back; returns once it answers metadata
    computectl dev freeze kafka --seconds 60   # SIGSTOP, then SIGCONT after 60 s
    computectl dev freeze kafka --node 1    # SIGSTOP until `dev thaw kafka --node 1`

From Python (the fault suite), with ``state_dir`` the folder ``dev up`` wrote (default
``<repo>/.cache/devstack``)::

    from devstack import control
    control.restart(state_dir, "kafka", kill=True)
    control.stop(state_dir, "kafka", node=2)
    control.start(state_dir, "kafka", node=2)
    control.freeze(state_dir, "kafka", node=1); control.thaw(state_dir, "kafka", node=1)

A stack started in-process (``LocalStack``) has the same faults as methods (stack.py:
``stop_broker``, ``start_broker``, ``freeze_broker``, ``thaw_broker``, ``restart_kafka`` ...).

Without ``node``, "kafka" means every node. ``kill=True`` is SIGKILL (a crash); otherwise
SIGTERM (Kafka's controlled shutdown, PostgreSQL's ``pg_ctl stop -m fast``). moto (s3) keeps
its data in memory: a restarted endpoint is empty. Every call raises DevStackError (a message
for a person) when there is no stack, no such component or node, or a process does not start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from devstack.kafka import default_repo_root
from devstack.kafka_cluster import KafkaCluster
from devstack.procs import DevStackError
from devstack.records import locked, read_state, write_state
from devstack.stack import LocalStack

COMPONENTS = ("kafka", "postgres", "s3")
Target = Any  # a ServerProcess or a KafkaCluster: halt/resume/restart/freeze/thaw


def _state_dir(state_dir: Path | str | None) -> Path:
    return Path(state_dir) if state_dir is not None else default_repo_root() / ".cache" / "devstack"


def _target(stack: LocalStack, component: str, node: int | None) -> Target:
    if component not in COMPONENTS:
        raise DevStackError(f"no component {component!r}: one of {', '.join(COMPONENTS)}")
    if node is not None:
        if component != "kafka":
            raise DevStackError("--node names a Kafka node; postgres and s3 have one process")
        return stack.broker(node)
    found = stack.components().get(component)
    if found is None:
        raise DevStackError(f"the recorded stack has no {component}")
    return found


def _on_record(state_dir: Path | str | None, component: str, node: int | None,
               act: Callable[[Target], None]) -> dict[str, Any]:
    """Read the record, act on the target, write the new pids back (also when ``act`` fails
    half-way: what did start must stay known to ``dev down``). Returns the new record."""
    folder = _state_dir(state_dir)
    with locked(folder):
        state = read_state(folder)
        if state is None:
            raise DevStackError(f"no local stack is recorded in {folder}: run `computectl dev up`")
        stack = LocalStack.from_state(state)
        target = _target(stack, component, node)
        try:
            act(target)
        finally:
            state.update(stack.to_state())
            write_state(folder, state)
        return state


def restart(state_dir: Path | str | None, component: str, *, kill: bool = False,
            timeout: float | None = None) -> dict[str, Any]:
    """Stop ``component`` (every Kafka node) and start it on the same data and ports."""
    return _on_record(state_dir, component, None, lambda t: t.restart(timeout, kill=kill))


def stop(state_dir: Path | str | None, component: str, *, node: int | None = None,
         kill: bool = False) -> dict[str, Any]:
    """Stop ``component`` (or one Kafka node), keep its data; ``start`` brings it back."""
    return _on_record(state_dir, component, node, lambda t: t.halt(kill=kill))


def start(state_dir: Path | str | None, component: str, *, node: int | None = None,
          timeout: float | None = None) -> dict[str, Any]:
    """Start a stopped component (or node) on its data; returns once it answers."""

    def act(t: Target) -> None:
        if isinstance(t, KafkaCluster) or not t.is_alive():
            t.resume(timeout)

    return _on_record(state_dir, component, node, act)


def freeze(state_dir: Path | str | None, component: str, *, node: int | None = None) -> None:
    """SIGSTOP ``component`` (every Kafka node, or one): alive, silent; ``thaw`` ends it."""
    _on_record(state_dir, component, node, lambda t: _each_process(t, lambda p: p.freeze()))


def thaw(state_dir: Path | str | None, component: str, *, node: int | None = None) -> None:
    _on_record(state_dir, component, node, lambda t: _each_process(t, lambda p: p.thaw()))


def _each_process(target: Target, fn: Callable[[Any], None]) -> None:
    for p in target.nodes if isinstance(target, KafkaCluster) else [target]:
        fn(p)


# --------------------------------------------------------------------------- the commands

_state_dir_option = click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    envvar="COMPUTE_DEVSTACK_STATE_DIR", show_envvar=True,
    help="The state folder of the stack `dev up` started [default: <repo>/.cache/devstack].")
_component_arg = click.argument("component", type=click.Choice(COMPONENTS))
_node_option = click.option("--node", type=int, default=None,
                            help="One Kafka node (1..brokers) instead of all of them.")
_kill_option = click.option("--kill", is_flag=True, help="SIGKILL (a crash) instead of a clean stop.")
_timeout_option = click.option("--timeout", type=float, default=None,
                               help="Seconds the process may take to answer again.")


def _run(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except DevStackError as exc:
        raise click.ClickException(str(exc)) from exc


def _pids(state: dict[str, Any], component: str) -> str:
    comp = state["components"][component]
    nodes = comp.get("nodes") or [comp]
    return ", ".join(str(n.get("pid") or "stopped") for n in nodes)


@click.command(name="restart")
@_component_arg
@_kill_option
@_timeout_option
@_state_dir_option
def restart_cmd(component: str, kill: bool, timeout: float | None, state_dir: Path | None) -> None:
    """Stop COMPONENT and start it on the same data and ports (the new pids are recorded)."""
    t0 = time.monotonic()
    state: dict[str, Any] = {}
    _run(lambda: state.update(restart(state_dir, component, kill=kill, timeout=timeout)))
    click.echo(f"{component} restarted in {time.monotonic() - t0:.1f}s: pid {_pids(state, component)}", err=True)


@click.command(name="stop")
@_component_arg
@_node_option
@_kill_option
@_state_dir_option
def stop_cmd(component: str, node: int | None, kill: bool, state_dir: Path | None) -> None:
    """Stop COMPONENT (or one Kafka node) and keep its data: `dev start` brings it back."""
    _run(lambda: stop(state_dir, component, node=node, kill=kill))
    click.echo(f"{component}{f' node {node}' if node else ''} stopped (data kept)", err=True)


@click.command(name="start")
@_component_arg
@_node_option
@_timeout_option
@_state_dir_option
def start_cmd(component: str, node: int | None, timeout: float | None, state_dir: Path | None) -> None:
    """Start a stopped COMPONENT (or Kafka node) on its data; returns once it answers."""
    state: dict[str, Any] = {}
    _run(lambda: state.update(start(state_dir, component, node=node, timeout=timeout)))
    click.echo(f"{component} running: pid {_pids(state, component)}", err=True)


@click.command(name="freeze")
@_component_arg
@_node_option
@click.option("--seconds", type=float, default=None,
              help="Thaw after this long (the command waits); without it, `dev thaw` thaws.")
@_state_dir_option
def freeze_cmd(component: str, node: int | None, seconds: float | None, state_dir: Path | None) -> None:
    """SIGSTOP COMPONENT (or one Kafka node): its sockets stay open, nothing answers."""
    _run(lambda: freeze(state_dir, component, node=node))
    if seconds is None:
        click.echo(f"{component} frozen; `computectl dev thaw {component}` lets it go on", err=True)
        return
    try:
        time.sleep(seconds)  # the fault's length: nothing to wait on but the clock
    finally:  # Ctrl-C too: never leave it frozen behind the user's back
        _run(lambda: thaw(state_dir, component, node=node))
    click.echo(f"{component} frozen for {seconds:g}s, thawed", err=True)


@click.command(name="thaw")
@_component_arg
@_node_option
@_state_dir_option
def thaw_cmd(component: str, node: int | None, state_dir: Path | None) -> None:
    """SIGCONT a frozen COMPONENT (or Kafka node)."""
    _run(lambda: thaw(state_dir, component, node=node))


COMMANDS = [restart_cmd, stop_cmd, start_cmd, freeze_cmd, thaw_cmd]
