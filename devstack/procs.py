"""Process helpers shared by the local stack: free ports, deadlines, spawning and stopping.

Every wait here polls a condition against a deadline; nothing sleeps for a fixed time and hopes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

POLL_INTERVAL_S = 0.05
_PR_SET_PDEATHSIG = 1


class DevStackError(RuntimeError):
    """A component of the local stack failed to start or stop; the message says why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports (all held open until every one is chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    *,
    interval: float = POLL_INTERVAL_S,
    abort: Callable[[], str | None] | None = None,
) -> bool:
    """Poll ``condition`` until it is true (returns True) or ``timeout`` seconds pass (False).

    ``abort`` is checked before each poll; a non-empty string it returns is raised as a
    DevStackError (e.g. "the JVM exited with code 1").
    """
    deadline = time.monotonic() + timeout
    while True:
        if abort is not None:
            reason = abort()
            if reason:
                raise DevStackError(reason)
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file, or a note that it is missing."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"<{path}: {exc.strerror}>"
    return "\n".join(data.splitlines()[-lines:])


# --------------------------------------------------------------------------- users

def running_as_root() -> bool:
    return os.geteuid() == 0


def unprivileged_user() -> pwd.struct_passwd:
    """The account PostgreSQL runs as when we are root (it refuses to run as root)."""
    name = os.environ.get("COMPUTE_DEVSTACK_USER", "nobody")
    try:
        return pwd.getpwnam(name)
    except KeyError as exc:
        raise DevStackError(
            f"running as root and there is no user {name!r} to run PostgreSQL as "
            "(set COMPUTE_DEVSTACK_USER to an unprivileged account)"
        ) from exc


def chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


# --------------------------------------------------------------------------- spawning

_LIBC: Any = None


def die_with_parent_fn() -> Callable[[], None]:
    """A preexec_fn that makes the child get SIGTERM when its parent dies."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    libc, parent = _LIBC, os.getpid()

    def die_with_parent() -> None:  # runs in the child between fork and exec
        # Popen applies user/group before preexec_fn, so this survives: the kernel clears
        # the setting on a uid/gid change, not on exec of an ordinary binary.
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent already died between fork and prctl
            os._exit(1)

    return die_with_parent


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    detached: bool,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: pwd.struct_passwd | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running server process, stdout+stderr appended to ``log_path``.

    Always in a session of its own, so a Ctrl-C in the terminal reaches only us and we stop
    it in order. ``detached=False``: it also gets SIGTERM if the process that started it dies
    (parent-death signal), so even a SIGKILLed test run leaves nothing behind.
    ``detached=True`` (``computectl dev up``): it outlives the CLI; ``dev down`` stops it.
    """
    log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            preexec_fn=None if detached else die_with_parent_fn(),  # noqa: PLW1509
            close_fds=True,
            **kwargs,
        )
    except OSError as exc:
        raise DevStackError(f"cannot start {argv[0]}: {exc}") from exc
    finally:
        log.close()


def run_checked(
    argv: Sequence[str],
    *,
    what: str,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: pwd.struct_passwd | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion; a non-zero exit raises DevStackError with its output."""
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            cwd=str(cwd) if cwd else None,
            timeout=timeout,
            check=False,
            **kwargs,
        )
    except subprocess.TimeoutExpired as exc:
        raise DevStackError(f"{what} did not finish within {timeout:.0f}s: {' '.join(argv)}") from exc
    except OSError as exc:
        raise DevStackError(f"{what}: cannot run {argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        out = "\n".join(x for x in (proc.stdout.strip(), proc.stderr.strip()) if x)
        raise DevStackError(f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n{out[-4000:]}")
    return proc


# --------------------------------------------------------------------------- liveness by pid

def proc_start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), to tell a pid from its reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 of the whole line


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """True while ``pid`` runs (a zombie counts as gone) and, if given, started at ``start_ticks``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    rest = stat[stat.rindex(")") + 2 :].split()
    if rest[0] in ("Z", "X"):
        return False
    return start_ticks is None or int(rest[19]) == start_ticks


def pid_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (R, S, T = stopped, Z ...), None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_pid(
    pid: int,
    *,
    start_ticks: int | None = None,
    sig: int = signal.SIGTERM,
    timeout: float = 30.0,
    popen: subprocess.Popen[bytes] | None = None,
) -> bool:
    """Send ``sig``, wait up to ``timeout`` for the process to go, then SIGKILL it.

    Works for our own children (reaped) and for processes a previous CLI call started
    (polled through /proc). Returns False if SIGKILL was needed.
    """
    if popen is not None and popen.poll() is not None:
        return True
    if not pid_alive(pid, start_ticks):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)

    def gone() -> bool:
        if popen is not None:
            return popen.poll() is not None
        _reap(pid)
        return not pid_alive(pid, start_ticks)

    if wait_until(gone, timeout):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not wait_until(gone, 10.0):
        raise DevStackError(f"process {pid} survived SIGKILL")
    return False


def process_group_members(pgid: int) -> list[int]:
    """Pids whose process group is ``pgid`` (our servers lead their own session and group)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        if rest[0] not in ("Z", "X") and int(rest[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def kill_group_leftovers(pgid: int, timeout: float = 10.0) -> None:
    """SIGKILL whatever is still in process group ``pgid`` (the leader is already gone)."""
    members = process_group_members(pgid)
    if not members:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    wait_until(lambda: not process_group_members(pgid), timeout)


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, start ticks) for every live (non-zombie) process."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        if rest[0] not in ("Z", "X"):
            table[int(entry.name)] = (int(rest[1]), int(rest[19]))
    return table


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start ticks) of every live descendant of ``pid`` (PostgreSQL's backends run in
    sessions of their own, so the process group alone does not find them)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for child, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(child)
    found: list[tuple[int, int]] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        found.append((p, table[p][1]))
        todo.extend(children.get(p, []))
    return found


def stop_tree(
    pid: int,
    *,
    start_ticks: int | None = None,
    sig: int = signal.SIGTERM,
    timeout: float = 30.0,
    popen: subprocess.Popen[bytes] | None = None,
    graceful: Callable[[], None] | None = None,
) -> None:
    """stop_pid() on a server, then SIGKILL whatever of its process tree and group is left.

    ``graceful`` (e.g. ``pg_ctl stop``) runs first, after the tree is noted; an exception
    from it is ignored (the signal does the same job).
    """
    tree = descendants(pid) if pid_alive(pid, start_ticks) else []
    if graceful is not None and pid_alive(pid, start_ticks):
        with contextlib.suppress(DevStackError):
            graceful()
    stop_pid(pid, start_ticks=start_ticks, sig=sig, timeout=timeout, popen=popen)
    kill_group_leftovers(pid)
    left = [(p, t) for p, t in tree if pid_alive(p, t)]
    # Give a moment to children that exit right after their parent (no signal needed).
    wait_until(lambda: not any(pid_alive(p, t) for p, t in left), 5.0)
    for p, t in left:
        if pid_alive(p, t):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    if not wait_until(lambda: not any(pid_alive(p, t) for p, t in left), 10.0):
        raise DevStackError(f"processes of {pid} survived SIGKILL: {[p for p, t in left if pid_alive(p, t)]}")
