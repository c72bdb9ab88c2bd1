"""Headless notebook runs with papermill: parameters in, an executed notebook under `runs/<date>/` out, and one
row per run in `prompt_workspace/notebook_runs`."""

from __future__ import annotations

import ast
import difflib
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pixeltable as pxt

from workspace import config
from workspace.display.frames import shown
from workspace.errors import WorkspaceError
from workspace.storage import tables
from workspace.storage.recovery import Owner

__all__ = [
    'KERNEL_NAME',
    'NotebookRun',
    'headless_kernel',
    'run_notebook',
    'list_notebook_runs',
    'mark_interrupted',
    'notebook_parameters',
    'parse_value',
]

log = logging.getLogger(__name__)

#: The kernel the notebooks are saved with; `prompt-workspace lab` registers it for this environment.
KERNEL_NAME = 'prompt-workspace'


@dataclass(frozen=True)
class NotebookRun:
    """One executed notebook: where its output is, how it ended and why."""

    run_id: str
    notebook: str
    parameters: dict[str, Any]
    status: str  # ok, failed or regression (a run whose process died is listed as interrupted)
    output_path: Path
    duration_s: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 'ok'

    def __str__(self) -> str:
        tail = f': {self.error}' if self.error else ''
        return f'{self.notebook} {self.status} in {self.duration_s:.1f} s -> {self.output_path}{tail}'


def parse_value(text: str) -> Any:
    """Return a command-line parameter value as Python: numbers, booleans, None, lists and dicts; else the text.

    >>> parse_value('0.05'), parse_value('true'), parse_value('production')
    (0.05, True, 'production')
    """
    lowered = text.strip().lower()
    if lowered in ('true', 'false'):
        return lowered == 'true'
    if lowered in ('none', 'null'):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, (int, float, list, dict, tuple)) else text


def notebook_parameters(notebook: str | Path) -> dict[str, Any]:
    """Return the parameters a notebook declares in its cell tagged `parameters`, with their defaults."""
    import papermill

    found = papermill.inspect_notebook(str(notebook))
    return {name: spec.get('default') for name, spec in found.items()}


def headless_kernel() -> str:
    """Return the kernel a headless run uses: one that runs this Python, so `prompt-workspace run` executes the
    notebook in this environment whatever kernel it was saved with, and works in a fresh clone where
    `prompt-workspace lab` never registered one (papermill stops with NoSuchKernel on an unknown name).

    >>> headless_kernel() in (KERNEL_NAME, 'python3')
    True
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    here = {sys.executable, 'python', 'python3', f'python{sys.version_info[0]}.{sys.version_info[1]}'}
    manager = KernelSpecManager()
    for name in (KERNEL_NAME, 'python3'):
        try:
            spec = manager.get_kernel_spec(name)
        except NoSuchKernel:
            continue
        if spec.argv and spec.argv[0] in here:  # jupyter_client runs a bare 'python' as this interpreter
            return name
    return 'python3'  # ipykernel's built-in kernel, which runs this interpreter


def _output_path(notebook: Path, started: Any, output_dir: Path | None) -> Path:
    folder = (output_dir or config.project_root() / 'runs') / started.strftime('%Y-%m-%d')
    folder.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime('%H%M%S') + f'.{started.microsecond // 1000:03d}'
    suffix = 1
    while True:
        name = f'{notebook.stem}-{stamp}.ipynb' if suffix == 1 else f'{notebook.stem}-{stamp}-{suffix}.ipynb'
        path = folder / name
        try:  # reserve the name atomically: two processes started in the same millisecond must not share a file
            path.open('x').close()
            return path
        except FileExistsError:
            suffix += 1


def run_notebook(
    notebook: str | Path,
    parameters: Mapping[str, Any] | None = None,
    *,
    output_dir: str | Path | None = None,
    progress: bool = False,
) -> NotebookRun:
    """Execute a notebook with papermill and record the run; return how it ended (never raises on a failed cell).

    The notebook runs in its own folder, with this workspace's Pixeltable home. A cell raising
    `RegressionError` (as `05_scheduled_eval.ipynb` does) ends the run with status 'regression'.

    >>> run_notebook('notebooks/05_scheduled_eval.ipynb', {'label': 'production'})
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    path = config.resolve_path(notebook).resolve()
    if path.is_dir():
        raise WorkspaceError(f'notebook {str(notebook)!r} is a folder; give the path of an .ipynb file in it')
    if not path.is_file():
        raise WorkspaceError(f'notebook {str(notebook)!r} does not exist (working directory: {Path.cwd()})')
    given = dict(parameters or {})
    declared = notebook_parameters(path)
    for name in given:
        if name not in declared:
            close = difflib.get_close_matches(name, declared, n=1)
            hint = f' Did you mean {close[0]!r}?' if close else ''
            raise WorkspaceError(
                f'{path.name} has no parameter {name!r}.{hint} Its parameters are: {", ".join(declared) or "none"}'
            )
    os.environ.setdefault('PIXELTABLE_HOME', str(config.pixeltable_home()))  # the kernel shares this workspace
    started, clock, run_id = config.utc_now(), time.perf_counter(), uuid.uuid4().hex[:12]
    out = _output_path(path, started, Path(output_dir) if output_dir else None)
    runs = tables.notebook_runs()
    root = config.project_root()
    name = str(path.relative_to(root) if path.is_relative_to(root) else path)
    row: dict[str, Any] = {
        'run_id': run_id,
        'notebook': name,
        'parameters': given,
        'started_at': started,
        'output_path': str(out),
        'host': socket.gethostname(),
        'pid': os.getpid(),
    }
    mark_interrupted(runs)
    runs.insert([{**row, 'status': 'running'}])
    status, error = 'ok', None
    try:
        papermill.execute_notebook(
            str(path),
            str(out),
            parameters=given,
            cwd=str(path.parent),
            kernel_name=headless_kernel(),
            progress_bar=progress,
            log_output=False,
        )
    except PapermillExecutionError as e:
        status = 'regression' if e.ename == 'RegressionError' else 'failed'
        error = f'{e.ename}: {e.evalue}'
    except Exception as e:  # the kernel died, or the notebook could not be read or written
        status, error = 'failed', f'{type(e).__name__}: {e}'
    duration = time.perf_counter() - clock
    runs.batch_update(
        [{**row, 'status': status, 'finished_at': config.utc_now(), 'duration_s': duration, 'error': error}]
    )
    result = NotebookRun(run_id, name, given, status, out, duration, error)
    log.info('%s', result)
    return result


def mark_interrupted(runs: pxt.Table | None = None) -> int:
    """Mark as `interrupted` the notebook runs still `running` whose process is gone; return how many.

    On this host a run is interrupted when its process has ended (killed, or the machine restarted). A run on
    another host cannot be asked, so it counts as interrupted once it has been running for
    `WORKSPACE_STALE_RUN_HOURS` (default 24).
    """
    runs = runs if runs is not None else tables.notebook_runs()
    stale_after_s = config.settings().stale_run_hours * 3600
    running = runs.where(runs.status == 'running').select(runs.run_id, runs.host, runs.pid, runs.started_at).collect()
    gone = [
        r
        for r in running
        if Owner.of(r['host'], r['pid'], r['started_at'].timestamp()).is_gone(stale_after_s=stale_after_s)
    ]
    if gone:
        runs.batch_update(
            [
                {
                    'run_id': r['run_id'],
                    'status': 'interrupted',
                    'error': f'the process that ran it ({r["pid"]} on {r["host"]}) ended before the run finished',
                }
                for r in gone
            ]
        )
        log.warning('marked %d notebook runs whose process ended as interrupted', len(gone))
    return len(gone)


def list_notebook_runs(notebook: str | None = None) -> pd.DataFrame:
    """Return notebook runs, newest first: notebook, parameters, status, duration and output path. Runs whose
    process died before they finished are marked `interrupted` first."""
    t = tables.notebook_runs()
    mark_interrupted(t)
    query: Any = t.where(t.notebook.contains(notebook)) if notebook else t
    return shown(
        query.select(
            t.started_at,
            t.notebook,
            t.status,
            t.duration_s,
            t.parameters,
            t.output_path,
            t.error,
            t.run_id,
        )
        .order_by(t.started_at, asc=False)
        .collect()
        .to_pandas()
    )
