"""Nothing left running: a test session fails if a process it started outlives it (and stops it), a Python
process that exits stops the embedded PostgreSQL server when no other process uses it (unless asked to keep it
up), and a process waiting on another's claims prints no warning."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
from conftest import CLI, ROOT
from openai_server import OpenAICompatibleServer

from reliability.conftest import child_env, run_python, spawn_python
from reliability.test_store import EVALUATE, SETUP, Counting

LEAKY = """
import subprocess
from pathlib import Path


def test_starts_a_server_and_forgets_it(tmp_path):
    process = subprocess.Popen(['sleep', '600'])
    Path(PID_FILE).write_text(str(process.pid))
"""


def _session(folder: Path, test: str) -> subprocess.CompletedProcess[str]:
    (folder / 'test_nested.py').write_text(test)
    env = child_env(PYTHONPATH=str(ROOT / 'tests'), PW_TEST_SESSION_GRACE_S='1')
    command = [sys.executable, '-m', 'pytest', '-q', '-p', 'session_guard', '-p', 'no:cacheprovider', 'test_nested.py']
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_a_session_that_leaves_a_process_running_fails_and_stops_it(tmp_path):
    pid_file = tmp_path / 'pid'
    done = _session(tmp_path, LEAKY.replace('PID_FILE', repr(str(pid_file))))
    assert done.returncode == 1, done.stdout[-3000:]
    assert 'still running at its end (now stopped)' in done.stdout and 'sleep 600' in done.stdout, done.stdout
    assert (
        not psutil.pid_exists(int(pid_file.read_text()))
        or psutil.Process(int(pid_file.read_text())).status() == 'zombie'
    )


def test_a_session_that_stops_what_it_starts_passes(tmp_path):
    tidy = LEAKY.replace('    Path(PID_FILE)', '    process.terminate()\n    process.wait()\n    Path(PID_FILE)')
    done = _session(tmp_path, tidy.replace('PID_FILE', repr(str(tmp_path / 'pid'))))
    assert done.returncode == 0, done.stdout[-3000:]


def _servers(folder: Path) -> list[str]:
    return subprocess.run(['pgrep', '-f', str(folder)], capture_output=True, text=True).stdout.split()


def _eventually_none(folder: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while _servers(folder):
        assert time.monotonic() < deadline, f'a PostgreSQL server still runs in {folder}'
        time.sleep(0.2)


def test_a_python_process_that_exits_stops_the_server_it_started(fresh_home):
    home = fresh_home
    assert run_python('print(json.dumps(ws.list_datasets()))', env=child_env(PIXELTABLE_HOME=str(home))) == []
    assert (home / 'pgdata' / 'PG_VERSION').exists()
    _eventually_none(home)


def test_the_last_of_two_processes_stops_the_server(fresh_home, tmp_path):
    home, ready, go = fresh_home, tmp_path / 'ready', tmp_path / 'go'
    env = child_env(PIXELTABLE_HOME=str(home))
    waiting = (
        f'ws.list_datasets()\nimport time, pathlib\npathlib.Path({str(ready)!r}).write_text("")\n'
        f'while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.1)\n'
    )
    try:
        first = spawn_python(waiting, env=env)  # a notebook kernel, say
        deadline = time.monotonic() + 300
        while not ready.exists():  # connected, its home made
            assert first.poll() is None and time.monotonic() < deadline, 'the first process did not connect'
            time.sleep(0.2)
        done = subprocess.run([*CLI, 'versions', 'list'], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert _servers(home), 'the command stopped a server another process uses'
        go.write_text('')
        assert first.wait(timeout=120) == 0
        _eventually_none(home)
    finally:
        go.write_text('')


def test_a_server_asked_to_stay_up_stays_up(fresh_home):
    home = fresh_home
    run_python('ws.list_datasets()', env=child_env(PIXELTABLE_HOME=str(home), WORKSPACE_KEEP_DB_SERVER='1'))
    running = _servers(home)
    assert running
    run_python('ws.list_datasets()', env=child_env(PIXELTABLE_HOME=str(home)))  # a later process keeps it too
    assert _servers(home) == running


def test_a_process_waiting_on_another_s_claims_prints_no_warning(ws):
    model = Counting(delay=0.2)
    with OpenAICompatibleServer(model) as server:
        env = child_env(OPENAI_BASE_URL=f'{server.url}/v1', WORKSPACE_MAX_ATTEMPTS='1', WORKSPACE_CONCURRENCY='2')
        run_python(SETUP, env=env)
        processes = [
            subprocess.Popen([sys.executable, '-c', 'import json, os, sys\nimport workspace as ws\n' + EVALUATE],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]  # fmt: skip
        outputs = [p.communicate(timeout=900) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    assert len(model.prompts) >= 48  # (paying once is tests/reliability/test_store.py's concern)
    for _, err in outputs:
        assert 'pipeline aborted' not in err and 'WARNING' not in err, err[-3000:]
