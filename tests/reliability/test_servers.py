"""No process left behind: a command stops the embedded PostgreSQL server it started, leaves alone one that was
running before it, and a test session stops every server it started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import CLI, ROOT, stop_postgres_servers

from reliability.conftest import child_env, run_python


def _servers(folder: Path) -> list[str]:
    found = subprocess.run(['pgrep', '-f', str(folder)], capture_output=True, text=True)
    return found.stdout.split()


def test_a_command_stops_the_server_it_started(fresh_home):
    home = fresh_home
    done = subprocess.run(
        [*CLI, 'versions', 'list'], env=child_env(PIXELTABLE_HOME=str(home)), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (home / 'pgdata' / 'PG_VERSION').exists(), 'the command used an embedded server in this home'
    assert _servers(home) == []


def test_a_command_leaves_a_server_that_was_running_alone(fresh_home):
    home = fresh_home
    env = child_env(PIXELTABLE_HOME=str(home))
    # A server someone asked to keep up (WORKSPACE_KEEP_DB_SERVER=1): it outlives the process that started it.
    run_python('ws.config.connect()', env={**env, 'WORKSPACE_KEEP_DB_SERVER': '1'})
    running = _servers(home)
    assert running
    done = subprocess.run([*CLI, 'versions', 'list'], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _servers(home) == running


def test_a_test_session_leaves_no_server(tmp_path):
    """A session of this suite in its own temporary folder, with a test that kills a child connected to the
    session's server (which leaves a stale entry in the server's list of processes): nothing runs there after."""
    killing = (
        'tests/reliability/test_crash_recovery.py::test_killed_first_import_leaves_no_dataset_and_a_reimport_works'
    )
    try:
        done = subprocess.run(
            [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', killing],
            env=child_env(TMPDIR=str(tmp_path)),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:]
        assert list(tmp_path.glob('pw-test-pxt-*/pgdata/PG_VERSION')), 'the session used a home in this folder'
        assert _servers(tmp_path) == []
    finally:
        stop_postgres_servers([tmp_path])
