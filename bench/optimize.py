"""Benchmark: does optimization beat a hand-written prompt, honestly measured, on data the project never saw?

For poem_sentiment and banking77 (../shared/datasets), a hand-written baseline with one demo per label is optimized
by each optimizer and demo policy on the embedded model; candidates are chosen on dev by macro-F1 with the
workspace's rules (degenerate candidates refused, a paired test to replace the baseline), and every top candidate
is then scored on an *untouched* stratified slice that neither the demos nor the selection ever saw:

- poem_sentiment: train.csv without its `mixed` verses (dev has none) minus a stratified slice of 150 verses is the
  demo pool; dev.csv (105 verses) selects; the 150 verses are the untouched slice.
- banking77: train.csv minus a stratified dev (3 per intent, 231) and an untouched slice (5 per intent, 385) is
  the pool.

Then the selection metrics are compared (which top candidate macro-F1 and balanced accuracy pick, and how it does
on the untouched slice), and a killed optimizer run is resumed to count repeated calls.
"""

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
from workspace.core.stats import label_metric_interval
from workspace.optimization.optimize import optimize
from workspace.optimization.selection import build_metric, verdict
from workspace.storage import backends, tables

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / 'shared' / 'datasets'

#: The optimizers the bench runs, with their knobs; each gets at most 15 minutes. knn_fewshot searches k and, for
#: labels on the local model, masked against calibrated label decoding (its default). BENCH_OPTIMIZERS=knn_fewshot
#: (comma-separated names) runs only those.
RUNS: list[tuple[str, dict[str, Any]]] = [
    ('knn_fewshot', {'k': [4, 8, 16]}),
    ('bootstrap_random_search', {'max_bootstrapped_demos': 4, 'max_labeled_demos': 8, 'num_candidate_programs': 4}),
    ('mipro_v2', {'max_bootstrapped_demos': 2, 'max_labeled_demos': 6}),
]
BUDGET: dict[str, Any] = {'max_minutes': 15}

TEMPLATES = {
    'poems': '{% for d in demos %}Verse: {{ d.text }}\nSentiment: {{ d.expected }}\n\n{% endfor %}Verse: {{ text }}\nSentiment:',
    'banking': '{% for d in demos %}Query: {{ d.text }}\nIntent: {{ d.expected }}\n\n{% endfor %}Query: {{ text }}\nIntent:',
}


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _stratified(frame: pd.DataFrame, label: str, per_label: int | None, share: float | None, seed: int) -> pd.Series:
    """Return a boolean mask picking `per_label` rows of each label (or a `share` of each), reproducibly."""
    picked = frame.groupby(label, group_keys=False).apply(
        lambda g: g.sample(n=per_label if per_label else max(1, round(share * len(g))), random_state=seed)
    )
    return frame.index.isin(picked.index)


def _poems() -> ws.Dataset | None:
    if not (SHARED / 'poem_sentiment' / 'train.csv').is_file():
        return None
    train = pd.read_csv(SHARED / 'poem_sentiment' / 'train.csv')
    dev = pd.read_csv(SHARED / 'poem_sentiment' / 'dev.csv')
    train = train[train['label'] != 'mixed'].reset_index(drop=True)  # dev has no mixed verse
    untouched = _stratified(train, 'label', None, 150 / len(train), seed=0)
    train = train.assign(
        split=['untouched' if u else 'train' for u in untouched], id=lambda f: 'tr' + f['id'].astype(str)
    )
    dev = dev.assign(split='dev', id=lambda f: 'dev' + f['id'].astype(str))
    frame = pd.concat([train, dev])[['id', 'text', 'label', 'split']]
    return ws.import_dataset(
        'bench_poems', frame, input='text', expected='label', split='split', id='id', if_exists='replace'
    )


def _banking() -> ws.Dataset | None:
    if not (SHARED / 'banking77' / 'train.csv').is_file():
        return None
    frame = pd.read_csv(SHARED / 'banking77' / 'train.csv').rename(columns={'category': 'label'})
    frame['id'] = [f'b{i:05d}' for i in range(len(frame))]
    dev = _stratified(frame, 'label', 3, None, seed=0)
    rest = frame[~dev]
    untouched = frame.index.isin(rest[_stratified(rest, 'label', 5, None, seed=1)].index)
    frame['split'] = ['dev' if d else 'untouched' if u else 'train' for d, u in zip(dev, untouched)]
    return ws.import_dataset(
        'bench_banking', frame, input='text', expected='label', split='split', id='id', if_exists='replace'
    )


def _predictions(version: ws.Version, dataset: ws.Dataset, split: str) -> tuple[dict[str, Any], int, float]:
    local = backends.get_backend('local')
    before = local.calls
    run, wall = _timed(lambda: ws.evaluate(version, dataset, split, progress=False))
    rows = run.rows()
    return dict(zip(rows['example_id'], rows['prediction'])), local.calls - before, wall


def _untouched(
    metric_name: str, dataset: ws.Dataset, baseline: dict[str, Any], candidate: dict[str, Any], names: tuple[str, str]
) -> Any:
    expected = {str(r['example_id']): r['expected'] for r in dataset.rows('untouched')}
    metric = build_metric(metric_name, task='choice', expected=expected)
    return verdict(metric, baseline, candidate, split='untouched', names=names)


def bench_dataset(name: str, dataset: ws.Dataset) -> list[str]:
    template = TEMPLATES[name]
    baseline = ws.create_version(
        f'bench_{name}',
        template=template,
        demos=dataset.demos(per_label=1),
        output=ws.choice(dataset.labels()),
        note='hand-written: one demo per label',
    )
    base_pred, base_calls, base_wall = _predictions(baseline, dataset, 'untouched')
    splits = dataset.splits()
    lines = [
        f'### {dataset.name}: {len(dataset.labels())} labels; pool {splits["train"]}, dev {splits["dev"]}, '
        f'untouched {splits["untouched"]} (stratified)',
        '',
        '| version | dev macro-F1 | untouched macro-F1 [95% CI] | untouched accuracy | vs baseline on untouched | '
        'accepted on dev | calls | optimizer wall s |',
        '|---|---:|---|---:|---|---|---:|---:|',
    ]
    expected = {str(r['example_id']): r['expected'] for r in dataset.rows('untouched')}
    acc = build_metric('accuracy', task='choice', expected=expected)
    f1 = build_metric('macro_f1', task='choice', expected=expected)
    lines.append(
        f'| {baseline.id} (one demo per label) | | {f1.score(base_pred):.3f} | {acc.score(base_pred):.3f} | | | '
        f'{base_calls} | |'
    )
    details = []
    chosen = [n for n in os.environ.get('BENCH_OPTIMIZERS', '').split(',') if n]
    for optimizer, options in RUNS:
        if chosen and optimizer not in chosen:
            continue
        print(f'{dataset.name}: {optimizer}...', file=sys.stderr, flush=True)
        res, wall = _timed(
            lambda o=optimizer, opts=options: optimize(
                baseline, dataset, optimizer=o, options=opts, budget=BUDGET, test=None, progress=False
            )
        )
        top = res.candidate
        if top is None:
            lines.append(f'| {optimizer}: no eligible candidate | | | | | no | {res.calls} | {wall:.0f} |')
            details.append(f'- {optimizer}: {res.decision}')
            continue
        pred, calls, _ = _predictions(top, dataset, 'untouched')
        result = _untouched('macro_f1', dataset, base_pred, pred, (baseline.id, top.id))
        lo, hi = _ci(f1, pred)
        lines.append(
            f'| {top.id} ({optimizer}, {_demos(top)}) | {top.meta["dev_score"]:.3f} | {result.value_b:.3f} '
            f'[{lo:.3f}, {hi:.3f}] | {acc.score(pred):.3f} | {result.diff * 100:+.1f} points, '
            f'{"p < 0.001" if result.p_value < 0.001 else f"p = {result.p_value:.3f}"} | '
            f'{"yes" if res.accepted else "no"} | {res.calls + calls} | {wall:.0f} |'
        )
        details.append(f'- {optimizer}: {res.decision} On untouched: {result.sentence()}')
        details.append(f'- {optimizer} trials on dev: {_trials(res.trials)}')
        if optimizer == 'knn_fewshot':
            details.append(_metric_choice(baseline, dataset, options, base_pred))
    return [*lines, '', *details]


def _trials(trials: pd.DataFrame) -> str:
    """Each scored trial in a few words: its demos, its label decoding, its dev score, flags and time."""
    parts = []
    for _, t in trials[trials['scope'] == 'dev'].iterrows():
        demos = t['demos']
        if isinstance(demos, dict) and 'k' in demos:
            what = f'nearest {demos["k"]}'
        else:
            what = f'{len(demos or [])} demos' if t['kind'] != 'baseline' else 'baseline'
        decode = (t['output'] or {}).get('decode', 'mask') if isinstance(t['output'], dict) else 'mask'
        score = 'n/a' if pd.isna(t['dev_score']) else f'{t["dev_score"]:.3f}'
        flags = ' (flagged)' if t['flags'] else ''
        parts.append(f'{what}, {decode}: {score}{flags}, {t["wall_s"]:.0f} s')
    return '; '.join(parts)


def _ci(metric: Any, predictions: dict[str, Any]) -> tuple[float, float]:
    ids = list(metric.expected)
    return label_metric_interval(metric.name, [str(metric.expected[i]) for i in ids], [predictions[i] for i in ids])


def _demos(version: ws.Version) -> str:
    policy = version.demo_policy
    if policy is not None:
        cap = f', at most {policy["per_label_max"]} per label' if policy['per_label_max'] else ''
        return f'nearest {policy["k"]}{cap}, {version.output.get("decode", "mask")}'
    return f'{len(version.demos)} fixed demos, {version.output.get("decode", "mask")}'


def _metric_choice(
    baseline: ws.Version, dataset: ws.Dataset, options: dict[str, Any], base_pred: dict[str, Any]
) -> str:
    """Select among the same knn_fewshot trials by balanced accuracy: which candidate, and how it does untouched."""
    res = optimize(
        baseline,
        dataset,
        optimizer='knn_fewshot',
        options=options,
        budget=BUDGET,
        metric='balanced_accuracy',
        test=None,
        progress=False,
    )
    if res.candidate is None:
        return f'- selected by balanced accuracy instead: no eligible candidate ({res.decision})'
    pred, _, _ = _predictions(res.candidate, dataset, 'untouched')
    result = _untouched('macro_f1', dataset, base_pred, pred, (baseline.id, res.candidate.id))
    return (
        f'- selected by balanced accuracy instead: {res.candidate.id} ({_demos(res.candidate)}), {res.calls} new calls; '
        f'untouched macro-F1 {result.value_b:.3f} ({result.diff * 100:+.1f} points vs the baseline)'
    )


def bench_resume(dataset: ws.Dataset) -> list[str]:
    """Run an optimization, forget its answers, run it again in a subprocess killed mid-way, then resume it."""
    local = backends.get_backend('local')
    baseline = ws.create_version(
        'bench_resume', template='Support ticket: {{ text }}\nTeam:', output=ws.choice(dataset.labels())
    )
    args: dict[str, Any] = {
        'optimizer': 'bootstrap_random_search',
        'budget': {'max_candidates': 3},
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
    code = f'from workspace.optimization.optimize import optimize\noptimize({baseline.id!r}, {dataset.name!r}, **{args!r})\n'
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
    same = resumed.decision == reference.decision and getattr(resumed.candidate, 'id', None) == getattr(
        reference.candidate, 'id', None
    )
    return [
        '### Resume (bootstrap_random_search on the bundled tickets, max_candidates 3)',
        '',
        '| run | model calls | wall s |',
        '|---|---:|---:|',
        f'| uninterrupted | {reference.calls} | {wall:.1f} |',
        f'| same run in a subprocess, killed (SIGKILL) | {len(killed_at)} | |',
        f'| started again | {calls} | {resumed_wall:.1f} |',
        '',
        f'- repeated calls: **{repeated}** (killed + resumed - uninterrupted); the same decision and top candidate as '
        f'the uninterrupted run: **{same}**',
    ]


def run() -> list[str]:
    lines = ['## Optimization (`bench/optimize.py`)', '', __doc__.split('\n\n')[1].replace('\n', ' '), '']
    for name, make in (('poems', _poems), ('banking', _banking)):
        dataset = make()
        if dataset is None:
            lines += [f'({name} skipped: not found under {SHARED})', '']
            continue
        lines += [*bench_dataset(name, dataset), '']
    tickets = ws.import_dataset(
        'bench_opt_tickets',
        ROOT / 'datasets' / 'support_tickets.csv',
        input=['text'],
        expected='category',
        split='split',
        id='id',
        if_exists='replace',
    )
    lines += bench_resume(tickets)
    return lines


if __name__ == '__main__':
    print('\n'.join(run()))
