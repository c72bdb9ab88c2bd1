"""Benchmark: a hand-written few-shot baseline against the version DSPy's optimizer makes from it, on the bundled
tickets (train for demos, dev for selection, test reported) and ../shared/datasets/poem_sentiment (train.csv for
demos, dev.csv for selection and report, since its test split is held back), with 95% intervals, model calls and
wall time; then the calls a killed optimizer run makes when it is started again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

import workspace as ws
from workspace import backends, tables
from workspace.demo import FEW_SHOT_TEMPLATE, few_shot_demos
from workspace.optimize import OptimizeResult, optimize
from workspace.stats import compare_scores, paired_bootstrap_ci

ROOT = Path(__file__).resolve().parent.parent
POEMS = ROOT.parent / 'shared' / 'datasets' / 'poem_sentiment'

#: The optimizer and budget the bench runs: about 10 minutes in all on 2 cores with the embedded model.
OPTIMIZER = 'bootstrap_random_search'
BUDGET = {'max_candidates': 5}


def _interval(scores: list[float]) -> str:
    mean, low, high = paired_bootstrap_ci([0.0] * len(scores), scores)
    return f'{mean:.3f} [{low:.3f}, {high:.3f}]'


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def bench_optimize(
    dataset: ws.Dataset,
    start: ws.Version,
    report: str,
    options: dict[str, Any],
    note: str,
    others: tuple[ws.Version, ...] = (),
) -> list[str]:
    """Optimize `start`, then score it, the winner and `others` (hand-written baselines) on the `report` split."""
    local = backends.get_backend('local')
    lines = [f'### {dataset.name}: {OPTIMIZER}, budget {BUDGET} ({note})', '']
    scored: list[tuple[str, ws.Run, int, float]] = []

    def score(version: ws.Version, label: str) -> ws.Run:
        before = local.calls
        run, wall = _timed(lambda: ws.evaluate(version, dataset, report, progress=False))
        scored.append((f'{version.id} ({label}, {len(version.demos)} demos)', run, local.calls - before, wall))
        return run

    start_run = score(start, 'start')
    other_runs = [score(v, 'hand-written') for v in others]
    res: OptimizeResult
    res, opt_wall = _timed(lambda: optimize(start, dataset, optimizer=OPTIMIZER, budget=BUDGET, options=options))
    best_run = score(res.best, 'optimized')
    lines += [f'| version | {report} accuracy, 95% CI | model calls | wall s |', '|---|---|---:|---:|']
    lines += [f'| {name} | {_interval(run.row_scores())} | {calls} | {wall:.1f} |' for name, run, calls, wall in scored]
    lines += [
        f'| optimizer run {res.run_id} | dev {res.baseline_score:.3f} -> {res.best_score:.3f} | {res.calls} | '
        f'{opt_wall:.1f} |',
        '',
    ]
    for base_run in [start_run, *other_runs]:
        a, b = base_run.row_scores(), best_run.row_scores()
        cmp = compare_scores(a, b, name_a=base_run.version.id, name_b=res.best.id, split=report)
        lines.append(
            f'- {res.best.id} against {base_run.version.id} on {report} ({cmp.n} examples): {cmp.diff:+.3f}, '
            f'95% CI [{cmp.ci_low:+.3f}, {cmp.ci_high:+.3f}], p = {cmp.p_value:.3f}: {cmp.verdict}'
        )
    lines.append(
        f'- optimizer: {res.n_trials} trials, {res.requests} requests ({res.calls} model calls, the rest answered '
        f'by the request store), {res.tokens} tokens, stopped by {res.stopped_by or "nothing (finished)"}'
    )
    if report == 'dev':
        lines.append('- the report split is the selection split here: the optimized score is biased upwards')
    return lines


def bench_resume(dataset: ws.Dataset) -> list[str]:
    """Run an optimization, forget its answers, run it again in a subprocess killed mid-way, then resume it."""
    local = backends.get_backend('local')
    baseline = ws.create_version(
        'bench_resume', template='Support ticket: {{ text }}\nTeam:', output=ws.choice(dataset.labels())
    )
    args: dict[str, Any] = {
        'optimizer': OPTIMIZER,
        'budget': {'max_candidates': 3},
        'options': {'max_bootstrapped_demos': 2, 'max_labeled_demos': 4},
        'dev': 'dev',
        'progress': False,
    }
    store = tables.requests()

    def answered(run_id: str) -> set[str]:
        rows = store.select(store.request_hash, store.first_version_id).collect()
        return {r['request_hash'] for r in rows if (r['first_version_id'] or '').startswith(run_id)}

    reference, wall = _timed(lambda: optimize(baseline, dataset, **args))
    first = answered(reference.run_id)
    store.delete(where=store.request_hash.isin(sorted(first)))
    trials, runs = tables.trials(), tables.optimize_runs()
    trials.delete(where=trials.run_id == reference.run_id)
    runs.delete(where=runs.run_id == reference.run_id)

    code = f'from workspace.optimize import optimize\noptimize({baseline.id!r}, {dataset.name!r}, **{args!r})\n'
    child = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, env=dict(os.environ))
    try:
        while len(answered(reference.run_id)) < len(first) // 2 and child.poll() is None:
            time.sleep(0.2)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    killed_at = answered(reference.run_id)
    before = local.calls
    resumed, resumed_wall = _timed(lambda: optimize(baseline, dataset, **args))
    calls = local.calls - before
    repeated = len(killed_at) + calls - len(first)
    same = resumed.best.id == reference.best.id and resumed.best_score == reference.best_score
    return [
        f'### Resume ({OPTIMIZER} on {dataset.name}, max_candidates 3)',
        '',
        '| run | model calls | wall s |',
        '|---|---:|---:|',
        f'| uninterrupted | {reference.calls} | {wall:.1f} |',
        f'| same run in a subprocess, killed (SIGKILL) | {len(killed_at)} | |',
        f'| started again | {calls} | {resumed_wall:.1f} |',
        '',
        f'- repeated calls: **{repeated}** (killed + resumed - uninterrupted); same best version and dev score as '
        f'the uninterrupted run: **{same}** ({resumed.best.id}, {resumed.best_score:.3f})',
    ]


def _poems() -> ws.Dataset | None:
    if not (POEMS / 'train.csv').is_file():
        return None
    train = pd.read_csv(POEMS / 'train.csv').assign(split='train')
    dev = pd.read_csv(POEMS / 'dev.csv').assign(split='dev')
    # dev has no 'mixed' verse: the label set is dev's, and train's mixed verses are left out
    train = train[train['label'].isin(set(dev['label']))]
    frame = pd.concat([train, dev]).assign(id=lambda f: f['split'] + '-' + f['id'].astype(str))
    return ws.import_dataset(
        'bench_poem_sentiment',
        frame[['id', 'text', 'label', 'split']],
        input='text',
        expected='label',
        split='split',
        id='id',
        if_exists='replace',
    )


def run() -> list[str]:
    lines = ['## Optimization (`bench/optimize.py`)', '']
    tickets = ws.import_dataset(
        'bench_opt_tickets',
        ROOT / 'datasets' / 'support_tickets.csv',
        input=['text'],
        expected='category',
        split='split',
        id='id',
        if_exists='replace',
    )
    # the few-shot template with no demos yet: the optimizer picks them
    zero_shot = ws.create_version(
        'bench_opt_tickets', template=FEW_SHOT_TEMPLATE, output=ws.choice(tickets.labels()), note='zero-shot'
    )
    few_shot = ws.create_version(
        'bench_opt_tickets_few_shot',
        template=FEW_SHOT_TEMPLATE,
        demos=few_shot_demos(tickets),
        output=ws.choice(tickets.labels()),
    )
    demos = {'max_bootstrapped_demos': 8, 'max_labeled_demos': 8}
    lines += bench_optimize(
        tickets, zero_shot, 'test', demos, 'train for demos, dev for selection, test reported', (few_shot,)
    )
    poems = _poems()
    if poems is not None:
        verse = FEW_SHOT_TEMPLATE.replace('Ticket:', 'Verse:').replace('Category:', 'Sentiment:')
        poem_baseline = ws.create_version(
            'bench_opt_poems', template=verse, demos=few_shot_demos(poems), output=ws.choice(poems.labels())
        )
        options = {'max_bootstrapped_demos': 4, 'max_labeled_demos': 6}
        lines += [''] + bench_optimize(poems, poem_baseline, 'dev', options, 'train.csv for demos, dev.csv for both')
    else:
        lines += ['', f'(poem_sentiment skipped: {POEMS} not found)']
    lines += [''] + bench_resume(tickets)
    return lines


if __name__ == '__main__':
    print('\n'.join(run()))
