"""Benchmark: how long the workspace takes to start.

- `import workspace` beside `import pixeltable`, each in a new process, interleaved so that both see the same load
  (target: the workspace <= 1.2x Pixeltable); also the first use of `ws.evaluate` (it imports the evaluation layer,
  Pixeltable included) and the command line's module;
- a no-op evaluation from the command line (`prompt-workspace eval VERSION DATASET --split dev`, every request
  answered before; target <= 1.5 s): run by the command server (`workspace/jobs/command_server.py`, which a
  command typed at a terminal leaves behind), and in a process of its own (`WORKSPACE_CLI_SERVER=off`) with the
  embedded PostgreSQL already running (a notebook kernel or `prompt-workspace lab` holds it) and with it stopped
  (the command starts it and stops it again).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from common import ROOT, busy_loop

REPEATS = int(os.environ.get('BENCH_STARTUP_REPEATS', '7'))

IMPORTS = {
    'import pixeltable': 'import pixeltable',
    'import workspace': 'import workspace',
    'import workspace; ws.evaluate': 'import workspace as ws; ws.evaluate',
    'import workspace.jobs.cli': 'import workspace.jobs.cli',
}


def _seconds(args: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f'{args} failed: {done.stderr[-2000:]}')
    return elapsed


def _row(name: str, times: list[float], reference: float | None = None) -> str:
    ratio = f'{statistics.median(times) / reference:.2f}x' if reference else ''
    return f'| {name} | {min(times):.2f} | {statistics.median(times):.2f} | {max(times):.2f} | {ratio} |'


def _imports() -> list[str]:
    times: dict[str, list[float]] = {name: [] for name in IMPORTS}
    for _ in range(REPEATS):  # interleaved: each repetition times every import once, under the same load
        for name, code in IMPORTS.items():
            times[name].append(_seconds([sys.executable, '-c', code]))
    reference = statistics.median(times['import pixeltable'])
    lines = [
        f'### Imports, each in a new process ({REPEATS} rounds, interleaved)',
        '',
        '| what | min s | median s | max s | against import pixeltable |',
        '|---|---|---|---|---|',
    ]
    lines += [_row(name, t, reference) for name, t in times.items()]
    return lines


def _server_running() -> bool:
    from pixeltable.env import Env

    return Env._instance is not None and Env._instance._db_server is not None


def _stop_server() -> None:
    from pixeltable.env import Env

    server = Env._instance._db_server
    server.cleanup_mode = 'stop'
    server._cleanup()
    Env._instance = None


def _cli_noop() -> list[str]:
    import workspace as ws

    tickets = ws.import_dataset(
        'bench_startup', ROOT / 'datasets' / 'support_tickets.csv', input=['text'], expected='category',
        split='split', id='id', if_exists='replace',
    )  # fmt: skip
    version = ws.create_version(
        'bench_startup', template='Ticket: {{ text }}\nCategory:', output=ws.choice(tickets.labels())
    )
    ws.evaluate(version, tickets, 'dev', progress=False)  # every request answered: the command has nothing to ask
    command = [sys.executable, '-m', 'workspace.jobs.cli', 'eval', version.id, tickets.name, '--split', 'dev', '-q']
    server = [sys.executable, '-m', 'workspace.jobs.cli', 'server']
    env = dict(os.environ, WORKSPACE_CLI_SERVER='off')
    warm = [_seconds(command, env) for _ in range(REPEATS)]
    served_env = dict(os.environ, WORKSPACE_CLI_SERVER='auto')
    _seconds([*server, 'start'], served_env)
    try:
        _seconds(command, served_env)  # the server's first command reads the catalog: not counted
        served = [_seconds(command, served_env) for _ in range(REPEATS)]
        busy = busy_loop()  # a laptop doing other work: one of the cores taken
        try:
            served_busy = [_seconds(command, served_env) for _ in range(REPEATS)]
        finally:
            busy.kill()
            busy.wait()
    finally:
        _seconds([*server, 'stop'], served_env)
    cold: list[float] = []
    if _server_running():
        _stop_server()
        cold = [_seconds(command, env) for _ in range(max(2, REPEATS // 2))]
    rows = len(tickets.rows('dev'))
    lines = [
        '',
        f'### A no-op evaluation from the command line ({rows} dev rows, every request answered before)',
        '',
        '| how it runs | min s | median s | max s | |',
        '|---|---|---|---|---|',
        _row('in the command server (started by an earlier command at a terminal, or `server start`)', served),
        _row('the same, one core kept busy by another process', served_busy),
        _row('in its own process, PostgreSQL running (a notebook or `prompt-workspace lab` holds it)', warm),
    ]
    if cold:
        lines.append(_row('in its own process, PostgreSQL stopped: the command starts it and stops it again', cold))
    return lines


def run() -> list[str]:
    load = os.getloadavg()
    return [
        '## Start-up (`bench/startup.py`)',
        '',
        f'Load average at the start: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min).',
        '',
        *_imports(),
        *_cli_noop(),
    ]
