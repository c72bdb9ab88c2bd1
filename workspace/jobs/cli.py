"""The `prompt-workspace` command line: the library's main calls, one line of error on failure."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from workspace import config
from workspace.errors import WorkspaceError
from workspace.jobs import command_server

__all__ = ['main', 'run_here', 'build_parser']

#: Exit codes: 0 ok, 1 failed (a cell, a command), 2 bad input, 3 regression flagged.
EXIT_FAILED, EXIT_USAGE, EXIT_REGRESSION = 1, 2, 3


def _out(frame: Any) -> None:
    import pandas as pd

    with pd.option_context('display.width', 160, 'display.max_columns', 20, 'display.max_colwidth', 60):
        print(
            frame.to_string(index=False)
            if isinstance(frame, pd.DataFrame) and not frame.empty
            else frame
            if not isinstance(frame, pd.DataFrame)
            else '(none)'
        )


def _init(args: argparse.Namespace) -> int:
    from workspace import config
    from workspace.core.datasets import import_dataset
    from workspace.storage import tables

    config.connect()
    for table in (tables.versions, tables.labels, tables.label_history, tables.requests, tables.runs):
        table()
    print(f'workspace data in {config.pixeltable_home()}')
    if not args.no_examples:
        root = config.project_root() / 'datasets'
        if (root / 'support_tickets.csv').is_file():
            import_dataset(
                'support_tickets',
                root / 'support_tickets.csv',
                input=['text'],
                expected='category',
                split='split',
                id='id',
            )
            print('dataset support_tickets (200 tickets) ready')
        if (root / 'ticket_summaries.jsonl').is_file():
            import_dataset(
                'ticket_summaries',
                root / 'ticket_summaries.jsonl',
                input=['ticket'],
                expected='references',
                split='split',
                id='id',
            )
            print('dataset ticket_summaries (60 tickets with reference summaries) ready')
    return 0


def _import(args: argparse.Namespace) -> int:
    from workspace.core.datasets import import_dataset

    rename = {}
    for pair in args.rename:
        old, sep, new = pair.partition('=')
        if not sep or not old or not new:
            raise WorkspaceError(f'--rename {pair!r} is not OLD=NEW, e.g. --rename Split=split_src')
        rename[old] = new
    data = import_dataset(
        args.name,
        args.path,
        input=args.input,
        expected=args.expected,
        split=args.split,
        id=args.id,
        task=args.task,
        seed=args.seed,
        rename=rename,
        if_exists='replace' if args.replace else 'error',
    )
    print(f'{data!r}; splits: {data.splits()}')
    return 0


def _versions(args: argparse.Namespace) -> int:
    from workspace.analysis.history import lineage_graph
    from workspace.core.versions import get_version, list_versions

    if args.action == 'list':
        _out(list_versions(args.ref))
    elif args.action == 'show':
        if not args.ref:
            raise WorkspaceError("give the version to show, e.g. 'prompt-workspace versions show ticket_router:v2'")
        v = get_version(args.ref)
        print(f'{v.id}  (parent {v.parent_id or "none"}, created {v.created_at:%Y-%m-%d %H:%M} by {v.author})')
        print(f'model {v.model}, params {json.dumps(v.params)}, output {json.dumps(v.output)}, {len(v.demos)} demos')
        if v.note:
            print(f'note: {v.note}')
        if v.instructions:
            print(f'instructions: {v.instructions}')
        print('--- template ---')
        print(v.template)
    else:
        if not args.ref:
            raise WorkspaceError("give the prompt, e.g. 'prompt-workspace versions lineage ticket_router'")
        _out(lineage_graph(args.ref.split(':')[0].split('@')[0]).table)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from workspace.core.evaluate import evaluate

    run = evaluate(
        args.version,
        args.dataset,
        args.split,
        samples=args.samples,
        progress=not args.quiet,
        retry_errors=args.retry_errors,
    )
    summary = run.summary()
    if args.json:
        print(
            json.dumps(
                {
                    'run_id': run.run_id,
                    'version': run.version.id,
                    'calls': run.calls,
                    'reused': run.reused,
                    'errors': summary.errors,
                    'metrics': summary.metrics,
                },
                default=str,
            )
        )
        return 0
    print(summary)
    if args.failures:
        print('\nfailures:')
        _out(run.failures(limit=args.failures))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from workspace.analysis.compare import build_comparison
    from workspace.ui.report import write_report

    cmp = build_comparison(args.dataset, args.versions, args.split, baseline=args.baseline)
    columns = [c for c in cmp.table.columns if not c.endswith(('_ci_low', '_ci_high')) and c != 'verdict']
    _out(cmp.table[columns].reset_index().round(4))
    for verdict in (c.verdict for c in cmp.pairwise.values()):
        print(f'- {verdict}')
    for note in cmp.notes:
        print(f'note: {note}')
    if args.html:
        print(f'report: {write_report(cmp, args.html).resolve()}')
    return 0


def _optimize(args: argparse.Namespace) -> int:
    from workspace.optimization.optimize import optimize

    budget = {
        k: v
        for k, v in (
            ('max_candidates', args.max_candidates),
            ('max_calls', args.max_calls),
            ('max_minutes', args.max_minutes),
        )
        if v is not None
    }
    result = optimize(
        args.version,
        args.dataset,
        optimizer=args.optimizer,
        metric=args.metric,
        train=args.train,
        dev=args.dev,
        budget=budget or None,
        teacher=args.teacher,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(result)
    return 0


def _label(args: argparse.Namespace) -> int:
    from workspace.core.labels import label_history, rollback, set_label

    if args.action in ('set', 'move'):
        if not args.label:
            raise WorkspaceError("give the label, e.g. 'prompt-workspace label set ticket_router:v3 production'")
        previous = set_label(args.target, args.label, note=args.note or '')
        print(f'{args.label} -> {args.target}' + (f' (was {previous})' if previous else ''))
    elif args.action == 'history':
        _out(label_history(args.target, args.label))
    else:
        if not args.label:
            raise WorkspaceError("give the label, e.g. 'prompt-workspace label rollback ticket_router production'")
        print(f'{args.target}@{args.label} -> {rollback(args.target, args.label, note=args.note or "")}')
    return 0


def _run(args: argparse.Namespace) -> int:
    from workspace.jobs.notebooks import parse_value, run_notebook

    parameters = {key: parse_value(value) for key, value in args.parameter}
    result = run_notebook(args.notebook, parameters, output_dir=args.output_dir, progress=not args.quiet)
    print(f'{result.status}: {result.notebook} in {result.duration_s:.1f} s; executed notebook: {result.output_path}')
    if result.error:
        print(f'error: {result.error}', file=sys.stderr)
    return {'ok': 0, 'regression': EXIT_REGRESSION}.get(result.status, EXIT_FAILED)


def _runs(args: argparse.Namespace) -> int:
    from workspace.jobs.notebooks import list_notebook_runs
    from workspace.jobs.schedule import scheduled_history

    if args.scheduled:
        frame = scheduled_history(args.prompt)
        columns = [
            'started_at',
            'status',
            'version_id',
            'main_score',
            'previous_score',
            'calls',
            'cost_usd',
            'duration_s',
        ]
    else:
        frame = list_notebook_runs(args.notebook)
        columns = ['started_at', 'notebook', 'status', 'duration_s', 'parameters', 'output_path']
    _out(frame[columns].head(args.limit) if not frame.empty else frame)
    return 0


def _lab(args: argparse.Namespace) -> int:
    from workspace import config
    from workspace.jobs.notebooks import KERNEL_NAME

    root = config.project_root()
    env = {**os.environ, 'PIXELTABLE_HOME': str(config.pixeltable_home())}
    # A named kernel for this environment, so a JupyterLab started elsewhere can run the notebooks too.
    subprocess.run(
        [
            sys.executable,
            '-m',
            'ipykernel',
            'install',
            '--user',
            '--name',
            KERNEL_NAME,
            '--display-name',
            'Python (prompt-workspace)',
        ],
        check=True,
        capture_output=True,
    )
    command = [sys.executable, '-m', 'jupyterlab', f'--ServerApp.root_dir={root}', *args.extra]
    if args.port:
        command.append(f'--port={args.port}')
    if args.no_browser:
        command.append('--no-browser')
    if os.name == 'nt':  # no exec on Windows: JupyterLab runs as a child
        return subprocess.call(command, env=env, cwd=root)
    # JupyterLab takes this process's place, so a signal to it (a supervisor's SIGTERM, a test's terminate) reaches
    # JupyterLab and its kernels instead of leaving them running without a parent.
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(root)
    os.execve(sys.executable, command, env)


def _demo(args: argparse.Namespace) -> int:
    from workspace.jobs.quickstart import run_demo

    report = run_demo(args.data, model=args.model, progress=not args.quiet)
    print(report)
    return 0 if report.ok else EXIT_FAILED


def _doctor(args: argparse.Namespace) -> int:
    from workspace.jobs.doctor import run_checks

    ok = True
    for name, passed, detail in run_checks():
        ok &= passed
        print(f'{"ok  " if passed else "FAIL"} {name}: {detail}')
    return 0 if ok else EXIT_FAILED


def _serve(args: argparse.Namespace) -> int:
    from workspace.serving.api import run

    print(f'serving on http://{args.host}:{args.port} (OpenAPI docs at /docs); Ctrl-C stops', flush=True)
    run(args.host, args.port)
    return 0


def _keys(args: argparse.Namespace) -> int:
    from workspace.serving import keys

    if args.action == 'list':
        _out(keys.list_keys())
        return 0
    if not args.name:
        raise WorkspaceError(f"give the key's name, e.g. 'prompt-workspace keys {args.action} checkout-service'")
    if args.action == 'create':
        key = keys.create_key(args.name, args.scope, rate=args.rate)
        print(key)
        print(f'key {args.name!r} ({args.scope}) created; it is shown only now, store it as a secret', file=sys.stderr)
    else:
        keys.revoke_key(args.name)
        print(f'key {args.name!r} revoked')
    return 0


def _audit(args: argparse.Namespace) -> int:
    from workspace.storage.audit_log import audit

    if args.verify:
        check = audit(verify=True)
        print(check)
        return 0 if check.ok else 1
    _out(audit(since=args.since, kind=args.kind, subject=args.subject, limit=args.limit))
    return 0


def _rules(args: argparse.Namespace) -> int:
    from workspace.core.rules import list_rules

    _out(list_rules(history=args.history))
    return 0


def _export(args: argparse.Namespace) -> int:
    from workspace.jobs.exports import export_run, export_runs, export_version

    if args.what == 'run':
        if not args.path:
            raise WorkspaceError("give the run id and a path, e.g. 'prompt-workspace export run 3f2a9c runs.parquet'")
        path = export_run(args.target, args.path)
    elif args.what == 'runs':
        path = export_runs(args.target, prompt=args.prompt, dataset=args.dataset)
    else:
        if not args.path:
            raise WorkspaceError("give the version and a path, e.g. 'prompt-workspace export version r:v3 r.yaml'")
        path = export_version(args.target, args.path, format=args.format)
    print(f'wrote {path}')
    return 0


def _import_prompt(args: argparse.Namespace) -> int:
    from workspace.jobs.exports import import_prompt

    v = import_prompt(args.path, prompt=args.prompt, parent=args.parent)
    print(f'{v.id} (parent {v.parent_id or "none"})')
    return 0


def _changelog(args: argparse.Namespace) -> int:
    from workspace.analysis.changelog import changelog

    print(changelog(args.version, model=args.model))
    return 0


def _models(args: argparse.Namespace) -> int:
    from workspace.analysis.model_comparison import evaluate_models

    print(evaluate_models(args.version, args.dataset, args.models, args.split, progress=not args.quiet))
    return 0


def _server(args: argparse.Namespace) -> int:
    if args.action == 'run':  # the server itself, in the foreground (what `start` runs in the background)
        command_server.serve(run_here)
        return 0
    if args.action == 'stop':
        print('command server stopped' if command_server.stop() else 'no command server runs for this workspace')
        return 0
    state = command_server.start() if args.action == 'start' else command_server.status()
    if state is None:
        print('no command server runs for this workspace')
    else:
        print(
            f'command server pid {state["pid"]}: {state["state"]}, {state["served"]} commands served, '
            f'exits after {state["idle_limit_s"] / 60:g} idle minutes'
        )
    return 0


def _command(
    commands: Any,
    name: str,
    func: Callable[[argparse.Namespace], int],
    summary: str,
    example: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=summary,
        description=description or summary,
        epilog=f'example:\n  {example}',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def _add_init(commands: Any) -> None:
    p = _command(
        commands, 'init', _init, 'create the workspace tables and import the bundled datasets', 'prompt-workspace init'
    )
    p.add_argument('--no-examples', action='store_true', help='do not import the bundled datasets')


def _add_import(commands: Any) -> None:
    p = _command(
        commands,
        'import',
        _import,
        'import a CSV, JSONL or JSON file as a dataset',
        'prompt-workspace import tickets datasets/support_tickets.csv --input text --expected category '
        '--split split --id id',
    )
    p.add_argument('name', help='dataset name')
    p.add_argument('path', help='CSV, JSONL or JSON file')
    p.add_argument('--input', action='append', required=True, help='an input field (repeat for several)')
    p.add_argument('--expected', required=True, help='the expected-output column')
    p.add_argument('--split', help='the split column (default: a seeded train/dev/test split)')
    p.add_argument('--id', help='the example-id column (default: ids derived from the inputs)')
    p.add_argument('--task', choices=['choice', 'text', 'json'], help='default: inferred from the expected values')
    p.add_argument('--seed', type=int, default=0, help='seed of the split made on import')
    p.add_argument('--replace', action='store_true', help='replace a dataset of that name (drops its evaluations)')
    p.add_argument(
        '--rename',
        action='append',
        default=[],
        metavar='OLD=NEW',
        help='rename a source column first (repeat), e.g. a column named like a reserved one: --rename Split=split_src',
    )


def _add_versions(commands: Any) -> None:
    p = _command(
        commands,
        'versions',
        _versions,
        "list versions, show one, or show a prompt's lineage",
        'prompt-workspace versions show ticket_router@production',
    )
    p.add_argument('action', choices=['list', 'show', 'lineage'])
    p.add_argument('ref', nargs='?', help='a prompt (list, lineage) or a version reference (show)')


def _add_eval(commands: Any) -> None:
    p = _command(
        commands,
        'eval',
        _eval,
        'evaluate a version on a dataset split (only new requests call the model)',
        'prompt-workspace eval ticket_router:v2 support_tickets --split dev --failures 10',
    )
    p.add_argument('version', help="a version reference: 'ticket_router:v2', 'ticket_router@production'")
    p.add_argument('dataset')
    p.add_argument('--split', help='default: every row')
    p.add_argument('--retry-errors', action='store_true', help='send requests that failed before again')
    p.add_argument(
        '--samples', type=int, default=1, metavar='K', help='ask each request K times (the version must sample)'
    )
    p.add_argument('--failures', type=int, default=0, metavar='N', help='also print N failed examples')
    p.add_argument('--json', action='store_true', help='print the metrics as JSON')
    p.add_argument('-q', '--quiet', action='store_true', help='no progress bar')


def _add_compare(commands: Any) -> None:
    p = _command(
        commands,
        'compare',
        _compare,
        'compare versions on a dataset split, with paired intervals',
        'prompt-workspace compare support_tickets ticket_router:v1 ticket_router:v3 --split dev --html reports/v3.html',
    )
    p.add_argument('dataset')
    p.add_argument('versions', nargs='+', help='two or more version references; the first is the baseline')
    p.add_argument('--split')
    p.add_argument('--baseline', help='default: the first version')
    p.add_argument('--html', metavar='PATH', help='also write the standalone HTML report here')


def _add_optimize(commands: Any) -> None:
    p = _command(
        commands,
        'optimize',
        _optimize,
        'optimize a version with a DSPy optimizer',
        'prompt-workspace optimize ticket_router:v2 support_tickets --optimizer knn_fewshot --max-minutes 15',
    )
    p.add_argument('version')
    p.add_argument('dataset')
    p.add_argument('--optimizer', default='knn_fewshot', help='default knn_fewshot (docs/optimize.md)')
    p.add_argument('--metric', help='default macro_f1 for labels, rouge_l for text')
    p.add_argument('--train', default='train')
    p.add_argument('--dev', default='dev')
    p.add_argument('--max-candidates', type=int)
    p.add_argument('--max-calls', type=int)
    p.add_argument('--max-minutes', type=float)
    p.add_argument(
        '--teacher', help='a version reference or model spec that bootstraps demos and proposes instructions'
    )
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('-q', '--quiet', action='store_true', help='no progress bar')


def _add_label(commands: Any) -> None:
    p = _command(
        commands,
        'label',
        _label,
        'set or move a label, show its history, or roll it back',
        'prompt-workspace label set ticket_router:v3 production --note "beats v1 on test"',
    )
    p.add_argument('action', choices=['set', 'move', 'history', 'rollback'])
    p.add_argument('target', help='a version reference (set, move) or a prompt (history, rollback)')
    p.add_argument('label', nargs='?')
    p.add_argument('--note')


def _add_run(commands: Any) -> None:
    p = _command(
        commands,
        'run',
        _run,
        'execute a notebook headless with papermill and record the run',
        'prompt-workspace run notebooks/05_scheduled_eval.ipynb -p label production',
        'Execute a notebook with papermill, writing it to runs/<date>/<name>-<time>.ipynb and recording the '
        'run (parameters, status, duration, output path). Exit code: 0 ok, 1 a cell failed, 3 a '
        'regression was flagged.',
    )
    p.add_argument('notebook')
    p.add_argument(
        '-p',
        '--parameter',
        nargs=2,
        action='append',
        default=[],
        metavar=('KEY', 'VALUE'),
        help='a notebook parameter (repeat); values are read as numbers, true/false, none or text',
    )
    p.add_argument('--output-dir', help='default: runs/ in the project')
    p.add_argument('-q', '--quiet', action='store_true', help='no progress bar')


def _add_runs(commands: Any) -> None:
    p = _command(
        commands,
        'runs',
        _runs,
        'list past notebook runs (or scheduled evaluations)',
        'prompt-workspace runs --scheduled --prompt ticket_router',
    )
    p.add_argument('--notebook', help='only runs of notebooks whose path contains this')
    p.add_argument('--scheduled', action='store_true', help='list scheduled evaluations instead')
    p.add_argument('--prompt', help='with --scheduled: only this prompt')
    p.add_argument('--limit', type=int, default=20)


def _add_lab(commands: Any) -> None:
    p = _command(
        commands,
        'lab',
        _lab,
        "start JupyterLab in the project with this environment's kernel",
        'prompt-workspace lab --port 8888',
        'Register this environment as the Jupyter kernel '
        '"prompt-workspace" and start JupyterLab in the project folder; options it does not know go to '
        'jupyter lab (e.g. --ServerApp.ip=0.0.0.0).',
    )
    p.add_argument('--port', type=int)
    p.add_argument('--no-browser', action='store_true')


def _add_demo(commands: Any) -> None:
    p = _command(
        commands,
        'demo',
        _demo,
        'run the main job on the bundled tickets and the embedded model',
        'prompt-workspace demo',
        'Run the quickstart notebook headless, edit its prompt, evaluate incrementally, print the summary '
        'and the model calls each change made, and write the comparison report.',
    )
    p.add_argument('--data', help='tickets CSV (default: datasets/support_tickets.csv)')
    p.add_argument('--model', default='local', help="model spec (default: 'local', the embedded model)")
    p.add_argument('-q', '--quiet', action='store_true', help='no progress bars')


def _add_serve(commands: Any) -> None:
    p = _command(
        commands,
        'serve',
        _serve,
        'serve prompt versions over HTTP (FastAPI under uvicorn)',
        'prompt-workspace serve --port 8000',
        'Start the HTTP API: GET /v1/prompts/{ref}, POST /v1/render, /v1/complete, /v1/outcomes, GET /healthz, '
        'OpenAPI docs at /docs. Create a key first with "prompt-workspace keys create NAME".',
    )
    p.add_argument('--host', default='127.0.0.1', help='default 127.0.0.1 (this machine only)')
    p.add_argument('--port', type=int, default=8000)


def _add_keys(commands: Any) -> None:
    p = _command(
        commands,
        'keys',
        _keys,
        'create, revoke or list API keys of the HTTP server',
        'prompt-workspace keys create checkout-service --scope serve',
        'A key is printed once, when created; the workspace stores only its SHA-256. Scopes: read (fetch '
        'versions), serve (also render, complete, log outcomes), admin (also move labels, change rules, read '
        'the audit log).',
    )
    p.add_argument('action', choices=['create', 'revoke', 'list'])
    p.add_argument('name', nargs='?')
    p.add_argument('--scope', choices=['read', 'serve', 'admin'], default='serve')
    p.add_argument('--rate', type=float, default=50.0, help='requests per second (bursts up to twice that)')


def _add_audit(commands: Any) -> None:
    p = _command(
        commands,
        'audit',
        _audit,
        'print the audit log: every change to versions, labels, rules, datasets, experiments and keys',
        'prompt-workspace audit --since 7d --kind label',
    )
    p.add_argument('--since', help='an age such as 30m, 2h, 7d, or an ISO date')
    p.add_argument('--kind', help='a kind (label.moved) or its first part (label)')
    p.add_argument('--subject', help='changes to one thing: a version id, prompt@label, rule or key name')
    p.add_argument('--limit', type=int, default=50)
    p.add_argument(
        '--verify',
        action='store_true',
        help='check the hash chain and table history instead: exit 1 naming the first broken link if a row was '
        'deleted or changed outside the workspace',
    )


def _add_rules(commands: Any) -> None:
    p = _command(commands, 'rules', _rules, 'list the guardrail rules', 'prompt-workspace rules --history')
    p.add_argument('--history', action='store_true', help='every version of every rule')


def _add_export(commands: Any) -> None:
    p = _command(
        commands,
        'export',
        _export,
        "export a run's predictions, the runs list, or a version",
        'prompt-workspace export version ticket_router@production prompts/ticket_router.yaml',
        "Write a run's predictions with lineage columns (export run RUN_ID PATH), the runs list (export runs PATH), "
        'or a version (export version REF PATH) to a file whose suffix names the format: .csv, .jsonl, .parquet; '
        '.yaml or .json prompt files, .txt for the template alone; --format dspy for a DSPy program JSON.',
    )
    p.add_argument('what', choices=['run', 'runs', 'version'])
    p.add_argument('target', help='a run id (run), a path (runs) or a version reference (version)')
    p.add_argument('path', nargs='?', help='the file to write (run, version)')
    p.add_argument('--format', choices=['dspy', 'yaml', 'json', 'text'], help='version: default from the suffix')
    p.add_argument('--prompt', help='runs: only this prompt')
    p.add_argument('--dataset', help='runs: only this dataset')


def _add_import_prompt(commands: Any) -> None:
    p = _command(
        commands,
        'import-prompt',
        _import_prompt,
        'create a version from a YAML or JSON prompt file, or a plain-text template (.txt), its parent recorded',
        'prompt-workspace import-prompt prompts/ticket_router.yaml',
    )
    p.add_argument('path')
    p.add_argument('--prompt', help='the prompt the version belongs to (default: the file says)')
    p.add_argument('--parent', help='the parent version (default: the version the file was exported from)')


def _add_changelog(commands: Any) -> None:
    p = _command(
        commands,
        'changelog',
        _changelog,
        "describe what changed from a version's parent, with the measured effect",
        'prompt-workspace changelog ticket_router:v3',
    )
    p.add_argument('version')
    p.add_argument('--model', help="model that writes the description (default: the version's)")


def _add_models(commands: Any) -> None:
    p = _command(
        commands,
        'models',
        _models,
        'evaluate one version on several models: quality, latency, tokens and cost',
        'prompt-workspace models ticket_router:v3 support_tickets local groq:llama-3.1-8b-instant --split dev',
    )
    p.add_argument('version')
    p.add_argument('dataset')
    p.add_argument('models', nargs='+', help='model specs, e.g. local, groq:llama-3.1-8b-instant, openai:gpt-4o-mini')
    p.add_argument('--split')
    p.add_argument('-q', '--quiet', action='store_true', help='no progress bar')


def _add_doctor(commands: Any) -> None:
    _command(
        commands,
        'doctor',
        _doctor,
        'check the installation: llama.cpp, the embedded model, Pixeltable',
        'prompt-workspace doctor',
    )


def _add_server(commands: Any) -> None:
    p = _command(
        commands,
        'server',
        _server,
        'start, stop or show the command server that keeps the workspace loaded between commands',
        'prompt-workspace server status',
    )
    p.add_argument('action', choices=['start', 'stop', 'status', 'run'], help='run: the server in the foreground')


_COMMANDS = (
    _add_init,
    _add_import,
    _add_versions,
    _add_eval,
    _add_compare,
    _add_optimize,
    _add_label,
    _add_run,
    _add_runs,
    _add_lab,
    _add_demo,
    _add_serve,
    _add_keys,
    _add_audit,
    _add_rules,
    _add_export,
    _add_import_prompt,
    _add_changelog,
    _add_models,
    _add_doctor,
    _add_server,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='prompt-workspace',
        description='Evaluate, compare, optimize and schedule prompts; the data lives in Pixeltable.',
        epilog='example:\n  prompt-workspace eval ticket_router@production support_tickets --split dev',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('-v', '--verbose', action='store_true', help='log what the workspace does; show tracebacks')
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for add in _COMMANDS:
        add(commands)
    return parser


def _skip_iri_format_checker() -> None:
    """Keep jsonschema from importing `rfc3987_syntax` in this process, which saves about a second of start-up for
    every notebook run (papermill and nbformat import jsonschema).

    nbformat installs jsonschema with its non-GPL format checkers, and jsonschema imports them all when it loads:
    `rfc3987_syntax`, the checker of the `iri` formats, compiles some 35 Lark grammars on import (1.0 s here; see
    python-jsonschema/jsonschema#1428). No notebook schema uses an `iri` format. Only in the `prompt-workspace`
    process: in anyone else's (a notebook kernel, a script calling `run_notebook`) the checker is theirs to keep.
    """
    if 'jsonschema' not in sys.modules:
        sys.modules.setdefault('rfc3987_syntax', None)  # type: ignore[arg-type]  # None: "not installed"


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command: in this workspace's command server when one runs (it has everything loaded), else here."""
    args = list(sys.argv[1:] if argv is None else argv)
    if argv is None:  # the `prompt-workspace` process itself, never a caller's
        _skip_iri_format_checker()
    code = command_server.forward(args)
    if code is not None:
        return code
    code = run_here(args)
    command_server.maybe_start_after(args, code)
    return code


def run_here(argv: Sequence[str]) -> int:
    """Run a command in this process (the command server runs each command it takes with this)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != 'lab':  # only `lab` passes further options on (to jupyter lab)
        parser.error(f'unrecognized arguments: {" ".join(extra)}')
    args.extra = extra
    # force: in the command server each command logs to its own terminal.
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format='%(levelname)s %(message)s', force=True)
    try:
        # An embedded PostgreSQL server this command starts is stopped when it exits; one that was running before
        # (a notebook kernel's, or `prompt-workspace lab`'s) is left alone.
        with config.stop_server_it_starts():
            return int(args.func(args))
    except WorkspaceError as e:
        if args.verbose:
            raise
        print(f'error: {e}', file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    except Exception as e:  # a bug or an environment problem: one line, the traceback with -v
        if args.verbose:
            raise
        print(f'error: {type(e).__name__}: {e} (run with -v for the traceback)', file=sys.stderr)
        return EXIT_FAILED


if __name__ == '__main__':
    sys.exit(main())
