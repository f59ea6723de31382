"""A throw-away PostgreSQL cluster: ``initdb`` into a temp dir, the postmaster on a free port.

PostgreSQL refuses to run as root. When we are root (CI machines are) the cluster's files
belong to an unprivileged account (``nobody`` unless ``COMPUTE_DEVSTACK_USER`` names another)
and ``initdb``/``postgres``/``pg_ctl`` run as that account; otherwise they run as us.

The postmaster is started directly (``postgres -D …``, what ``pg_ctl start`` runs) rather than
through ``pg_ctl start``, so that it is our child: it gets the parent-death signal and a test run
that dies leaves no server behind. It is stopped with ``pg_ctl stop -m fast``.
Authentication is ``trust`` on 127.0.0.1 and the socket dir only: a throw-away cluster.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

from devstack.procs import (
    DevStackError,
    chown_tree,
    free_port,
    pid_alive,
    proc_start_ticks,
    run_checked,
    running_as_root,
    spawn,
    tail,
    unprivileged_user,
    wait_until,
)
from devstack.server import ServerProcess, record_owner, sweep_stale_workdirs

DATABASE = "compute"


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    # Debian/Ubuntu keep the server binaries off PATH.
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise DevStackError(
        f"{name!r} (PostgreSQL server) is not on PATH: install PostgreSQL 14+ "
        "(e.g. apt-get install postgresql) or put its bin/ on PATH"
    )


def _blocking_parent(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The first folder on the way to ``path`` that ``user`` may not enter (no x bit), if any."""
    for folder in [*reversed(path.parents), path]:
        st = folder.stat()
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == user.pw_gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return folder
    return None


def can_connect(url: str, timeout: float = 2.0) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=max(1, int(timeout))) as conn:
            conn.execute("select 1")
        return True
    except psycopg.Error:
        return False


class PostgresCluster(ServerProcess):
    """One throw-away cluster on 127.0.0.1 with a database ``compute``; see :attr:`url`."""

    def __init__(
        self,
        *,
        port: int | None = None,
        database: str = DATABASE,
        detached: bool = False,
        base_dir: Path | str | None = None,
    ) -> None:
        self.port = port
        self.database = database
        super().__init__(detached=detached, base_dir=base_dir)
        self.run_as: pwd.struct_passwd | None = unprivileged_user() if running_as_root() else None
        self.superuser = self.run_as.pw_name if self.run_as else pwd.getpwuid(os.geteuid()).pw_name
        self._postgres = ""

    @property
    def datadir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "data"

    @property
    def sockdir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "sock"

    def url_for(self, database: str) -> str:
        if self.port is None:
            raise DevStackError("the PostgreSQL cluster has not been started")
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{database}"

    @property
    def url(self) -> str:
        """``postgresql://<user>@127.0.0.1:<port>/compute`` (trust auth, no password)."""
        return self.url_for(self.database)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        if self.run_as is not None:
            env.update(HOME=str(self.workdir), USER=self.run_as.pw_name, LOGNAME=self.run_as.pw_name)
        return env

    def _log_tail(self) -> str:
        assert self.workdir is not None
        return f"--- {self.workdir / 'postgres.log'} (tail) ---\n{tail(self.workdir / 'postgres.log')}"

    # start() (ServerProcess): returns once ``compute`` exists.

    def prepare(self, timeout: float = 60.0) -> None:
        """Port, temp dir (owned by the unprivileged user when we are root) and ``initdb``.

        Thread-safe; the caller runs stop() if it raises.
        """
        if self.pid is not None or self.workdir is not None:
            raise DevStackError("the PostgreSQL cluster is already started")
        self._t0 = time.monotonic()
        initdb = _binary("initdb")
        self._postgres = _binary("postgres")
        if self.port is None:
            self.port = free_port()
        if self.run_as is not None and self.base_dir is not None:
            blocked = _blocking_parent(self.base_dir.resolve(), self.run_as)
            if blocked is not None:
                raise DevStackError(
                    f"PostgreSQL runs as {self.run_as.pw_name!r}, which cannot enter {blocked} "
                    f"(on the way to base_dir {self.base_dir}); pick a base_dir it can reach"
                )
        sweep_stale_workdirs("devstack-postgres-", self.base_dir)
        self.workdir = Path(tempfile.mkdtemp(prefix="devstack-postgres-", dir=self.base_dir))
        self.sockdir.mkdir(mode=0o700)
        if self.run_as is not None:
            chown_tree(self.workdir, self.run_as.pw_uid, self.run_as.pw_gid)
        run_checked(
            [initdb, "-D", str(self.datadir), "-U", self.superuser, "-A", "trust", "-E", "UTF8",
             "--no-locale", "--no-sync", "--no-instructions"],
            what="initdb",
            timeout=max(30.0, timeout / 2),
            env=self._env(),
            cwd=self.workdir,
            user=self.run_as,
        )

    def launch(self) -> None:
        """Start the postmaster. Call it from the thread that outlives the cluster (see spawn)."""
        assert self.workdir is not None and self.port is not None, "prepare() first"
        self._postgres = self._postgres or _binary("postgres")  # resume() of a recorded cluster
        self._drop_stale_lock()
        self._proc = spawn(
            [self._postgres, "-D", str(self.datadir), "-p", str(self.port), "-h", self.host,
             "-k", str(self.sockdir), "-F",
             "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200", "-c", "logging_collector=off"],
            log_path=self.workdir / "postgres.log",
            detached=self.detached,
            env=self._env(),
            cwd=self.workdir,
            user=self.run_as,
        )
        self.pid = self._proc.pid
        self.start_ticks = proc_start_ticks(self.pid)
        record_owner(self.workdir, self.pid, self.start_ticks)

    def _drop_stale_lock(self) -> None:
        """After a SIGKILL, postmaster.pid and the socket's lock file name a dead postmaster.
        PostgreSQL ignores a lock whose pid is gone, but one still a zombie (not yet reaped:
        ``dev up``'s postmaster is re-parented to init) passes its kill(pid, 0) check, and it
        refuses to start. pid_alive() counts a zombie as gone."""
        for lock in [self.datadir / "postmaster.pid", *self.sockdir.glob(".s.PGSQL.*.lock")]:
            try:
                pid = int(lock.read_text().split("\n", 1)[0])
            except (OSError, ValueError):
                continue
            if not pid_alive(pid):
                lock.unlink(missing_ok=True)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll until a connection succeeds, then create the database. Thread-safe."""

        def exited() -> str | None:
            if self._cancelled.is_set():
                return "start cancelled"
            code = self._proc.poll()
            if code is None:
                return None
            return f"PostgreSQL exited with code {code} while starting\n{self._log_tail()}"

        admin_url = self.url_for("postgres")
        remaining = max(1.0, timeout - (time.monotonic() - self._t0))
        if not wait_until(lambda: can_connect(admin_url), remaining, interval=0.1, abort=exited):
            raise DevStackError(
                f"PostgreSQL on port {self.port} did not accept a connection within {timeout:.0f}s\n"
                f"{self._log_tail()}"
            )
        import psycopg

        with psycopg.connect(admin_url, autocommit=True) as conn:
            # resume() starts a cluster whose database exists already.
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{self.database}"')
        self.start_seconds = time.monotonic() - self._t0

    def cancel(self) -> None:
        """Make a wait_ready() in another thread give up at its next poll."""
        self._cancelled.set()

    def ping(self, timeout: float = 2.0) -> bool:
        return self.port is not None and can_connect(self.url, timeout)

    def _stop_graceful(self, timeout: float) -> None:
        """``pg_ctl stop -m fast``; SIGINT/SIGKILL by pid if that fails (stop() and halt())."""
        if self.pid is None:
            return
        workdir = self.workdir

        def pg_ctl_stop() -> None:
            if workdir is None or not (workdir / "data" / "postmaster.pid").exists():
                return
            run_checked(
                [_binary("pg_ctl"), "stop", "-D", str(workdir / "data"), "-m", "fast", "-w",
                 "-t", str(int(timeout))],
                what="pg_ctl stop",
                timeout=timeout + 5,
                env=self._env(),
                cwd=workdir,
                user=self.run_as,
            )

        # Then SIGINT (PostgreSQL's "fast shutdown"): a no-op when pg_ctl stopped it.
        self._stop_process(timeout, sig=signal.SIGINT, graceful=pg_ctl_stop)

    def to_state(self) -> dict[str, Any]:
        return {
            **self._process_state(),
            "port": self.port,
            "superuser": self.superuser,
            "database": self.database,
            "url": self.url if self.port else None,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PostgresCluster:
        cluster = cls(port=state.get("port"), database=state.get("database", DATABASE), detached=True)
        cluster.superuser = state.get("superuser", cluster.superuser)
        cluster.pid = state.get("pid")
        cluster.start_ticks = state.get("start_ticks")
        cluster.workdir = Path(state["workdir"]) if state.get("workdir") else None
        return cluster
