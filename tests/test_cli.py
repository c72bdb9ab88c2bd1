"""The command line: every command's help has an example, errors are one line with a non-zero exit, and the
commands do what they say; plus the documented cron line, two runs at once, and `lab`."""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import time
import urllib.request

import pytest
from conftest import CLI, ROOT

from workspace.jobs.cli import build_parser, main
from workspace.jobs.notebooks import list_notebook_runs
from workspace.jobs.schedule import scheduled_history

COMMANDS = [
    'init',
    'import',
    'versions',
    'eval',
    'compare',
    'optimize',
    'label',
    'run',
    'runs',
    'lab',
    'demo',
    'doctor',
    'serve',
    'keys',
    'audit',
    'rules',
    'export',
    'import-prompt',
    'changelog',
    'models',
    'server',
]


@pytest.mark.parametrize('command', COMMANDS)
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, '--help'])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert 'example:\n  prompt-workspace ' + command in text


def test_the_parser_knows_every_command():
    subparsers = next(a for a in build_parser()._actions if a.dest == 'command')
    assert sorted(subparsers.choices) == sorted(COMMANDS)


def test_errors_are_one_line_and_exit_non_zero(ws, capsys):
    assert main(['eval', 'nothing:v1', 'nowhere']) == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and err.startswith("error: prompt 'nothing' has no versions")
    assert main(['run', 'notebooks/nope.ipynb']) == 2
    assert 'does not exist' in capsys.readouterr().err
    assert main(['run', str(ROOT / 'notebooks' / '05_scheduled_eval.ipynb'), '-p', 'lable', 'production']) == 2
    assert "has no parameter 'lable'. Did you mean 'label'?" in capsys.readouterr().err


def test_import_eval_compare_label_versions(ws, tiny_tickets, scripted_versions, tmp_path, capsys):
    tiny, v1, v2, v3, _ = scripted_versions
    assert (
        main(
            [
                'import',
                'tiny2',
                str(tiny_tickets),
                '--input',
                'text',
                '--expected',
                'category',
                '--split',
                'split',
                '--id',
                'id',
            ]
        )
        == 0
    )
    assert "splits: {'dev': 6, 'train': 6}" in capsys.readouterr().out
    assert main(['eval', v2.id, 'tiny', '--split', 'dev', '--failures', '3', '-q']) == 0
    out = capsys.readouterr().out
    assert 'accuracy' in out and 'model calls' in out
    assert main(['eval', v1.id, 'tiny', '--split', 'dev', '--json', '-q']) == 0
    assert '"accuracy": 0.333' in capsys.readouterr().out
    report = tmp_path / 'cmp.html'
    assert main(['compare', 'tiny', v1.id, v2.id, '--split', 'dev', '--html', str(report)]) == 0
    out = capsys.readouterr().out
    assert 'router:v2 is' in out or 'no detectable difference' in out
    assert report.read_text().startswith('<!DOCTYPE html>')
    assert main(['label', 'set', v2.id, 'production', '--note', 'better']) == 0
    assert main(['label', 'move', v3.id, 'production']) == 0
    assert main(['label', 'rollback', 'router', 'production']) == 0
    assert capsys.readouterr().out.strip().endswith('router@production -> router:v2')
    assert main(['label', 'history', 'router', 'production']) == 0
    assert 'rollback' in capsys.readouterr().out
    assert main(['versions', 'list', 'router']) == 0
    assert 'router:v3' in capsys.readouterr().out
    assert main(['versions', 'show', 'router@production']) == 0
    assert 'v2\nTicket: {{ text }}' in capsys.readouterr().out
    assert main(['versions', 'lineage', 'router']) == 0
    assert 'production' in capsys.readouterr().out


def test_init_imports_the_bundled_datasets(ws, capsys):
    assert main(['init']) == 0
    assert 'support_tickets (200 tickets) ready' in capsys.readouterr().out
    assert set(ws.list_datasets()) == {'support_tickets', 'ticket_summaries'}
    assert main(['init']) == 0  # again: nothing changes


def _documented_cron_line() -> str:
    text = (ROOT / 'docs' / 'scheduling.md').read_text()
    return re.search(r'```cron\n(.+?)\n```', text, re.S).group(1).strip()


def test_documented_cron_line_runs_and_records(scripted_versions, monkeypatch):
    """The exact command of the cron line in docs/scheduling.md, run the way cron runs it (a shell, from $HOME)."""
    import workspace as ws

    line = _documented_cron_line()
    fields = line.split(None, 5)
    assert re.fullmatch(r'0 2 \* \* \*', ' '.join(fields[:5])), 'a nightly schedule in the five cron fields'
    command = fields[5].replace('/path/to/prompt-workspace', str(ROOT))
    assert 'prompt-workspace run notebooks/05_scheduled_eval.ipynb -p label production' in command
    # The cron line evaluates the defaults: ticket_router@production on support_tickets/dev.
    tiny, v1, v2, v3, _ = scripted_versions
    ws.import_dataset(
        'support_tickets',
        ROOT / 'datasets' / 'support_tickets.csv',
        input=['text'],
        expected='category',
        split='split',
        id='id',
    )
    prod = ws.create_version(
        'ticket_router',
        template='v2\nTicket: {{ text }}\nCategory:',
        model='openai:fake',
        output=ws.choice(ws.get_dataset('support_tickets').labels()),
    )
    ws.set_label(prod, 'production')
    log = ROOT / 'runs' / 'cron.log'
    size = log.stat().st_size if log.exists() else 0
    done = subprocess.run(['bash', '-c', command], cwd=os.path.expanduser('~'), timeout=600)
    assert done.returncode == 0, log.read_text()[size:]
    assert 'ok: notebooks/05_scheduled_eval.ipynb' in log.read_text()[size:]
    latest = scheduled_history('ticket_router').iloc[0]
    assert latest['status'] == 'ok' and latest['version_id'] == prod.id


def test_airflow_example_is_valid_python():
    text = (ROOT / 'docs' / 'scheduling.md').read_text()
    example = re.search(r'```python\n(.+?)\n```', text, re.S).group(1)
    tree = ast.parse(example)
    names = {n.attr if isinstance(n, ast.Attribute) else getattr(n, 'id', None) for n in ast.walk(tree)}
    assert 'PapermillOperator' in names and '05_scheduled_eval.ipynb' in example


def test_two_runs_at_once_keep_separate_records(scripted_versions):
    import workspace as ws

    tiny, v1, v2, v3, _ = scripted_versions
    ws.set_label(v2, 'production')
    args = [
        *CLI,
        'run',
        str(ROOT / 'notebooks' / '05_scheduled_eval.ipynb'),
        '-q',
        '-p',
        'prompt',
        'router',
        '-p',
        'dataset',
        'tiny',
    ]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = list_notebook_runs('05_scheduled_eval').head(2)
    assert list(runs['status']) == ['ok', 'ok'] and runs['output_path'].nunique() == 2
    assert all(os.path.exists(p) for p in runs['output_path'])
    scheduled = scheduled_history('router').head(2)
    assert list(scheduled['status']) == ['ok', 'ok'] and scheduled['run_id'].nunique() == 2


def test_runs_lists_past_runs(scripted_versions, capsys):
    import workspace as ws

    tiny, v1, v2, v3, _ = scripted_versions
    ws.set_label(v2, 'production')
    assert (
        main(
            [
                'run',
                str(ROOT / 'notebooks' / '05_scheduled_eval.ipynb'),
                '-q',
                '-p',
                'prompt',
                'router',
                '-p',
                'dataset',
                'tiny',
            ]
        )
        == 0
    )
    assert 'ok: notebooks/05_scheduled_eval.ipynb' in capsys.readouterr().out
    assert main(['runs']) == 0
    assert '05_scheduled_eval' in capsys.readouterr().out
    assert main(['runs', '--scheduled', '--prompt', 'router']) == 0
    assert 'router:v2' in capsys.readouterr().out
    ws.set_label(v1, 'production')
    assert (
        main(
            [
                'run',
                str(ROOT / 'notebooks' / '05_scheduled_eval.ipynb'),
                '-q',
                '-p',
                'prompt',
                'router',
                '-p',
                'dataset',
                'tiny',
            ]
        )
        == 3
    )  # a regression exits with 3


def test_lab_starts_jupyterlab_with_the_workspace_kernel(tmp_path):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = {**os.environ, 'JUPYTER_RUNTIME_DIR': str(tmp_path / 'runtime')}
    proc = subprocess.Popen(
        [
            *CLI,
            'lab',
            '--no-browser',
            '--port',
            str(port),
            '--IdentityProvider.token=t0k',
            '--ServerApp.allow_root=True',
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/api/kernelspecs?token=t0k', timeout=1) as r:
                    specs = r.read().decode()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail('prompt-workspace lab did not start JupyterLab')
        assert '"prompt-workspace"' in specs
        with urllib.request.urlopen(f'http://127.0.0.1:{port}/api/contents/notebooks?token=t0k', timeout=5) as r:
            assert '01_quickstart.ipynb' in r.read().decode()
    finally:
        proc.terminate()  # as a supervisor stops it: JupyterLab itself gets the signal, not a parent over it
        proc.wait(20)
    import psutil

    left = [p.pid for p in psutil.process_iter(['cmdline']) if f'--port={port}' in (p.info['cmdline'] or [])]
    assert left == [], f'JupyterLab still running after its command was stopped: {left}'


def test_keys_audit_and_rules_commands(ws, capsys):
    assert main(['keys', 'create', 'billing-app', '--scope', 'read']) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith('pw_') and len(key) > 50
    assert main(['keys', 'list']) == 0
    listed = capsys.readouterr().out
    assert 'billing-app' in listed and key not in listed and key.split('_', 2)[2] not in listed
    assert main(['keys', 'create', 'billing-app']) == 2
    assert 'already named' in capsys.readouterr().err
    ws.set_rule('no_urls', 'custom', function='udfs.rules.no_urls')
    assert main(['rules']) == 0 and 'no_urls:v1' in capsys.readouterr().out
    assert main(['keys', 'revoke', 'billing-app']) == 0
    capsys.readouterr()
    assert main(['audit', '--kind', 'key']) == 0
    out = capsys.readouterr().out
    assert 'key.revoked' in out and 'key.created' in out and key not in out
    assert main(['audit', '--since', 'yesterday']) == 2
    assert "since='yesterday' is not a time" in capsys.readouterr().err
