"""The notebooks: well-formed (parameters cell first, no outputs, only the workspace API), and run headless under
papermill on small parameters, in order, as a user or cron would. Every notebook also runs as opened in JupyterLab
in tests/test_browser.py (02, 03, 04, 07 and 08 only there)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import CLI, ROOT

from workspace.analysis.annotations import list_annotations
from workspace.jobs.notebooks import list_notebook_runs
from workspace.jobs.schedule import scheduled_history

NOTEBOOKS = sorted((ROOT / 'notebooks').glob('*.ipynb'))


def test_the_notebooks_are_these():
    assert [p.name for p in NOTEBOOKS] == [
        '01_quickstart.ipynb',
        '02_iterate.ipynb',
        '03_optimize.ipynb',
        '04_diff_report.ipynb',
        '05_scheduled_eval.ipynb',
        '06_judges_and_samples.ipynb',
        '07_guardrails_and_serving.ipynb',
        '08_prompt_families.ipynb',
        '09_chat_prompts.ipynb',
    ]


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_thin_parameterized_and_clean(path: Path):
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    assert book.metadata['kernelspec']['name'] == 'prompt-workspace'  # the kernel `prompt-workspace lab` registers
    code = [c for c in book.cells if c.cell_type == 'code']
    assert 'parameters' in code[0].metadata.get('tags', []), 'the first code cell must be tagged parameters'
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, 'notebooks are committed without outputs'
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert [a.name for a in node.names] == ['workspace'], f'{path.name} imports {node.names[0].name}'
            if isinstance(node, ast.ImportFrom):  # a deeper concept, from the layer that owns it
                assert (node.module or '').startswith('workspace.'), f'{path.name} imports from {node.module}'
            assert not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.For, ast.While)), (
                f'{path.name} has logic that belongs in the library: {ast.dump(node)[:80]}'
            )
    for node in ast.walk(ast.parse(code[0].source)):
        assert not isinstance(node, ast.Call), 'the parameters cell holds plain values only'


def _run(notebook: str, *, data_dir: Path | None = None, **parameters):
    """Run a notebook as a user or cron would: `prompt-workspace run NOTEBOOK -p key value ...` in a new process.
    With `data_dir`, Jupyter's data directory is that (empty) folder, as in a fresh clone where no kernel is
    registered."""

    args = [*CLI, 'run', str(ROOT / 'notebooks' / notebook), '-q']
    for key, value in parameters.items():
        args += ['-p', key, str(value)]
    env = {**os.environ, 'JUPYTER_DATA_DIR': str(data_dir)} if data_dir else None
    done = subprocess.run(args, capture_output=True, text=True, timeout=1800, env=env)
    assert done.returncode == 0, f'{notebook}: {done.stdout}{done.stderr}'
    record = list_notebook_runs(Path(notebook).stem).iloc[0]
    assert record['status'] == 'ok' and f'executed notebook: {record["output_path"]}' in done.stdout
    return record, nbformat.read(record['output_path'], as_version=4)


def _text(book, source: str = '') -> str:
    """Return the outputs of the notebook's cells (those whose source starts with `source`) as text."""
    parts = []
    for cell in book.cells:
        if not cell.get('source', '').startswith(source):
            continue
        for out in cell.get('outputs', []):
            parts.append(out.get('text', ''))
            parts.extend(str(v) for v in out.get('data', {}).values())
    return '\n'.join(parts)


def test_quickstart_then_the_scheduled_eval_under_papermill(ws, tiny_tickets, tmp_path):
    """What a scheduled job does, headless: 01 imports and evaluates in a fresh clone (no kernel registered), then
    05 evaluates the production version and records it. 02 to 04 run as opened in test_browser.py, which checks
    what they print."""
    fresh_clone = tmp_path / 'jupyter-data'  # no `prompt-workspace` kernel registered: the run still finds one
    first, book = _run(
        '01_quickstart.ipynb', data_dir=fresh_clone, dataset_name='nb_tiny', dataset_path=str(tiny_tickets), fresh=True
    )
    assert 'accuracy' in _text(book) and 'ticket_router:v1' in _text(book)
    assert 'llama_' not in _text(book) and 'ggml' not in _text(book)  # llama.cpp's own log stays out of the notebook
    summary = _text(book, 'run.summary()')
    assert 'exact_match' not in summary and 'table version' in summary  # accuracy once; not "v1"
    assert 'background-color' in _text(book, 'run.confusion_matrix()')  # a heatmap
    assert 'datetime.datetime' not in _text(book, 'run.lineage(')  # a readable lineage
    output = Path(first['output_path'])
    assert output.parent.parent == ROOT / 'runs' and output.name.startswith('01_quickstart-')
    runs = list_notebook_runs('01_quickstart')
    assert runs.iloc[0]['status'] == 'ok' and json.loads(json.dumps(runs.iloc[0]['parameters']))['fresh'] is True

    ws.set_label('ticket_router:v1', 'production')
    _, book = _run('05_scheduled_eval.ipynb', dataset='nb_tiny')
    assert 'no regression' in _text(book)
    latest = scheduled_history('ticket_router').iloc[0]
    assert latest['status'] == 'ok' and latest['version_id'] == 'ticket_router:v1'
    assert latest['calls'] == 0  # 01 evaluated v1 on these rows: the scheduled run reuses every answer


def test_chat_prompts_notebook(ws, tiny_tickets):
    """09 evaluates a chat version on the embedded model, diffs and compares it with a completion version, serves
    it with its messages, evaluates its pinned dataset version with no call and reproduces its run."""
    _, book = _run('09_chat_prompts.ipynb', dataset_name='nb_chat', dataset_path=str(tiny_tickets))
    assert "{'role': 'assistant', 'content': 'BILLING'}" in _text(book, 'chat.render_messages')
    assert 'accuracy' in _text(book, 'run = ws.evaluate') and 'Messages' in _text(book, 'ws.diff')
    assert "'role': 'system'" in _text(book, 'ws.set_label(chat')
    assert 'chat_router:v2' in _text(book, 'answer = ws.complete')
    assert '0 model calls; True' in _text(book, 'pinned = ws.evaluate')
    assert 'every score reproduced' in _text(book, 'run.reproduce()')
    stats = ws.serving_stats('chat_router').set_index('version_id')
    assert stats.loc['chat_router:v2', 'renders'] == 1 and stats.loc['chat_router:v2', 'completions'] == 1


def test_scheduled_notebook_flags_a_regression(scripted_versions):
    import workspace as ws

    tiny, v1, v2, v3, _ = scripted_versions
    ws.set_label(v2, 'production')
    params = {'prompt': 'router', 'dataset': 'tiny', 'split': 'dev'}
    good = ws.run_notebook(ROOT / 'notebooks' / '05_scheduled_eval.ipynb', params)
    assert good.status == 'ok'
    ws.set_label(v1, 'production')  # a bad release: v1 is right on 2 of 6
    bad = ws.run_notebook(ROOT / 'notebooks' / '05_scheduled_eval.ipynb', params)
    assert bad.status == 'regression' and 'accuracy fell from 1.000 to 0.333' in bad.error
    history = scheduled_history('router')
    assert list(history['status'][:2]) == ['regression', 'ok']
    assert list(history['version_id'][:2]) == [v1.id, v2.id]
    assert history.iloc[0]['previous_score'] == 1.0
    runs = list_notebook_runs('05_scheduled_eval')
    assert list(runs['status'][:2]) == ['regression', 'ok'] and runs.iloc[0]['output_path'] == str(bad.output_path)


def test_headless_runs_use_a_kernel_running_this_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Papermill stops with NoSuchKernel on a kernel name that is not installed, so headless runs pick the
    project's kernel when it runs this Python, else the built-in python3 kernel (which does)."""
    from workspace.jobs.notebooks import KERNEL_NAME, headless_kernel

    monkeypatch.setenv('JUPYTER_DATA_DIR', str(tmp_path))
    assert headless_kernel() == 'python3'  # a fresh clone: nothing registered
    spec = tmp_path / 'kernels' / KERNEL_NAME / 'kernel.json'
    spec.parent.mkdir(parents=True)
    spec.write_text(
        json.dumps(
            {
                'argv': ['/elsewhere/bin/python', '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
                'display_name': 'Python (prompt-workspace)',
                'language': 'python',
            }
        )
    )
    assert headless_kernel() == 'python3'  # registered by another environment: not this one's code
    spec.write_text(
        json.dumps(
            {
                'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
                'display_name': 'Python (prompt-workspace)',
                'language': 'python',
            }
        )
    )
    assert headless_kernel() == KERNEL_NAME


def test_runs_started_in_the_same_millisecond_get_separate_files(tmp_path: Path):
    """The output name is reserved atomically, so concurrent runs never write the same notebook file."""
    import datetime
    from concurrent.futures import ThreadPoolExecutor

    from workspace.jobs.notebooks import _output_path

    started = datetime.datetime(2026, 11, 25, 3, 0, 0, 123456)
    book = ROOT / 'notebooks' / '05_scheduled_eval.ipynb'
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: _output_path(book, started, tmp_path), range(16)))
    assert len(set(paths)) == 16 and all(p.is_file() for p in paths)
    names = {p.name for p in paths}
    assert '05_scheduled_eval-030000.123.ipynb' in names and '05_scheduled_eval-030000.123-16.ipynb' in names
    assert all(p.parent == tmp_path / '2026-11-25' for p in paths)


def test_judges_and_samples_notebook_under_papermill(ws, tiny_tickets):
    """06 judges a run, checks the judge against a stand-in annotator, samples, and writes a changelog; run again,
    it makes no model call."""
    params = {'dataset_name': 'nb_judged', 'dataset_path': str(tiny_tickets), 'samples': 2, 'annotate_rows': 3}
    _, book = _run('06_judges_and_samples.ipynb', **params)
    text = _text(book)
    assert 'judged_correct' in text and 'pw-annotate' in text and 'pw-agreement-table' in text
    assert 'pass^2' in text and 'pw-changelog' in text
    assert len(list_annotations('nb_judged', annotator='reference')) == 6
    first = ws.list_runs('judged_router')
    _run('06_judges_and_samples.ipynb', **params)
    again = ws.list_runs('judged_router')
    newest = again[~again['run_id'].isin(first['run_id'])]
    assert len(newest) == 2 and (newest['calls'] == 0).all() and (newest['judge_calls'] == 0).all()
