"""kill -9 at the dangerous points of an import and during a notebook run: the stored dataset survives (old or new
under its name, never neither), leftovers are cleaned up by the next import, a re-import works, and a notebook
run whose process died is marked interrupted on the next start."""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import time
from pathlib import Path

import nbformat
import pixeltable as pxt
import pytest
from conftest import CLI, ROOT

from reliability.conftest import child_env, kill_at, paused_at
from workspace.jobs.notebooks import list_notebook_runs
from workspace.storage import tables

IMPORT = """
path, replace = sys.argv[1], sys.argv[2] == 'replace'
ws.import_dataset('tiny', path, input='text', expected='category', split='split', id='id',
                  if_exists='replace' if replace else 'error')
"""


def _import_in_child(path: Path, *, replace: bool, point: str) -> None:
    code = f'sys.argv = ["-", {str(path)!r}, {"replace" if replace else "new"!r}]\n' + IMPORT
    kill_at(code, point)


def _staging() -> list[str]:
    return pxt.list_tables(tables.STAGING_DIR, recursive=False)


def _changed(tiny_tickets: Path, tmp_path: Path) -> Path:
    changed = tmp_path / 'changed.csv'
    changed.write_text(tiny_tickets.read_text().replace('charged twice', 'charged three times'))
    return changed


@pytest.mark.parametrize('point', ['import.staged', 'import.inserted', 'import.aside'])
def test_killed_replace_import_leaves_the_dataset_and_a_reimport_works(ws, tiny_tickets, tmp_path, point):
    stored = ws.import_dataset('tiny', tiny_tickets, input='text', expected='category', split='split', id='id')
    rows = stored.rows()
    changed = _changed(tiny_tickets, tmp_path)

    _import_in_child(changed, replace=True, point=point)

    assert _staging(), 'the killed import left its staging table behind'
    kept = ws.get_dataset('tiny')  # after a kill between the two moves, this puts the old table back
    assert kept.rows() == rows
    replaced = ws.import_dataset(
        'tiny', changed, input='text', expected='category', split='split', id='id', if_exists='replace'
    )
    assert 'charged three times' in replaced.rows('dev')[0]['text'] and len(replaced) == 12
    assert _staging() == [], 'the next import removed what the killed one left'
    assert ws.list_datasets() == ['tiny']


def test_killed_first_import_leaves_no_dataset_and_a_reimport_works(ws, tiny_tickets):
    _import_in_child(tiny_tickets, replace=False, point='import.staged')
    assert len(_staging()) == 1 and pxt.get_table(_staging()[0]).count() == 0  # the empty staging table
    assert ws.list_datasets() == []
    data = ws.import_dataset('tiny', tiny_tickets, input='text', expected='category', split='split', id='id')
    assert len(data) == 12
    assert _staging() == []


def test_a_live_import_keeps_its_staging_table(ws, tiny_tickets, tmp_path):
    """The cleanup only takes what dead processes left: the staging table of an import still running stays."""
    ws.import_dataset('tiny', tiny_tickets, input='text', expected='category', split='split', id='id')
    code = f'sys.argv = ["-", {str(_changed(tiny_tickets, tmp_path))!r}, "replace"]\n' + IMPORT
    with paused_at(code, 'import.inserted'):
        ws.import_dataset('other', tiny_tickets, input='text', expected='category', split='split', id='id')
        assert len(_staging()) == 1, "another import must not drop a live import's staging table"


def _sleeping_notebook(folder: Path, marker: Path) -> Path:
    book = nbformat.v4.new_notebook()
    book.cells = [
        nbformat.v4.new_code_cell('seconds = 600', metadata={'tags': ['parameters']}),
        nbformat.v4.new_code_cell(f'import pathlib, time\npathlib.Path({str(marker)!r}).touch()\ntime.sleep(seconds)'),
    ]
    book.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    path = folder / 'sleeper.ipynb'
    nbformat.write(book, path)
    return path


def test_killed_notebook_run_is_marked_interrupted_on_the_next_start(ws, tmp_path):
    marker = tmp_path / 'started'
    notebook = _sleeping_notebook(tmp_path, marker)
    log = tmp_path / 'run.log'
    with log.open('w') as out:
        child = subprocess.Popen(
            [*CLI, 'run', str(notebook), '-q', '--output-dir', str(tmp_path / 'runs')],
            env=child_env(),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the command and its kernel
        )
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert child.poll() is None, f'the run ended before the notebook started: {log.read_text()[-3000:]}'
            assert time.monotonic() < deadline, 'the notebook did not start in 180 s'
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):  # it ended on its own
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    t = tables.notebook_runs()
    assert t.where(t.status == 'running').count() == 1
    runs = list_notebook_runs('sleeper')
    assert list(runs['status']) == ['interrupted']
    assert f'({child.pid} on ' in runs['error'].iloc[0] and 'ended before the run finished' in runs['error'].iloc[0]


def test_runs_on_another_host_are_interrupted_after_the_staleness_limit(ws, monkeypatch):
    now = datetime.datetime.now(datetime.timezone.utc)
    t = tables.notebook_runs()
    base = {'notebook': 'nb.ipynb', 'parameters': {}, 'status': 'running', 'output_path': 'x', 'host': 'elsewhere'}
    t.insert(
        [
            {**base, 'run_id': 'old', 'started_at': now - datetime.timedelta(hours=25), 'pid': 1234},
            {**base, 'run_id': 'recent', 'started_at': now - datetime.timedelta(hours=1), 'pid': 1234},
        ]
    )
    status = dict(zip(*list_notebook_runs()[['run_id', 'status']].T.values))
    assert status == {'old': 'interrupted', 'recent': 'running'}
    monkeypatch.setenv('WORKSPACE_STALE_RUN_HOURS', '0.5')
    status = dict(zip(*list_notebook_runs()[['run_id', 'status']].T.values))
    assert status == {'old': 'interrupted', 'recent': 'interrupted'}
