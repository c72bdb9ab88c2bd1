"""Benchmark: does the optimizer beat the hand-written prompt, and the embedder alone, on data the project never saw,
within 15 minutes on a busy laptop?

The bench first times a nearest-8 version's evaluation on 2 cores, then starts a Python busy loop in a process of
its own and keeps it running to the end, so every optimization figure is measured with one of the 2 cores taken. For each label set a hand-written baseline with one
demo per label is optimized by `knn_fewshot` with its defaults and a 15-minute budget; candidates are chosen on
dev by macro-F1 with the workspace's rules. The top candidate, the baseline and the reference baselines (the
k-nearest vote, k chosen on dev, and the majority label: no model call) are then scored on an *untouched*
stratified slice that neither the demos nor the selection saw, with 95% intervals and paired permutation tests.
Label sets: poem_sentiment and banking77 (../shared/datasets), SNIPS and CLINC150 (bench/data, filled by
`bench/fetch_data.py`; bench/DATA.md). The text task, e2e_nlg, is scored by ROUGE-L against every reference.

Also: what a 3-minute budget returns on banking77 (run first, its answers then forgotten so that the 15-minute run
starts cold), where a nearest-8 version's evaluation time goes on banking77, and a killed run resumed.

BENCH_SETS=banking,snips runs only those sets; BENCH_MINUTES changes the budget (for trying the bench, not for
reporting); BENCH_SPEED=0 leaves out the timing of the nearest-8 version (8 minutes).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
from common import ROOT, SHARED, busy_loop

import workspace as ws
from workspace.core.baselines import reference_baselines
from workspace.core.demo_policies import retrieve
from workspace.core.stats import bootstrap_interval, label_metric_interval
from workspace.optimization.optimize import optimize
from workspace.optimization.records import answered_by_run
from workspace.optimization.selection import build_metric, verdict
from workspace.storage import backends, tables

DATA = ROOT / 'bench' / 'data'
MINUTES = float(os.environ.get('BENCH_MINUTES', '15'))

TEMPLATES = {
    'poems': '{% for d in demos %}Verse: {{ d.text }}\nSentiment: {{ d.expected }}\n\n{% endfor %}Verse: {{ text }}\nSentiment:',
    'intent': '{% for d in demos %}Query: {{ d.text }}\nIntent: {{ d.expected }}\n\n{% endfor %}Query: {{ text }}\nIntent:',
    'e2e': '{% for d in demos %}Meaning: {{ d.mr }}\nSentence: {{ d.expected }}\n\n{% endfor %}Meaning: {{ mr }}\nSentence:',
}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _stratified(frame: pd.DataFrame, label: str, per_label: int | None, share: float | None, seed: int) -> pd.Series:
    """Return a boolean mask picking `per_label` rows of each label (or a `share` of each), reproducibly."""
    picked = frame.groupby(label, group_keys=False).apply(
        lambda g: g.sample(n=min(len(g), per_label) if per_label else max(1, round(share * len(g))), random_state=seed)
    )
    return frame.index.isin(picked.index)


def _import(name: str, frame: pd.DataFrame) -> ws.Dataset:
    # A label set, whatever its size (inference alone took CLINC150's 150 intents for text until 2026-12-07).
    return ws.import_dataset(
        name, frame, input='text', expected='label', split='split', id='id', task='choice', if_exists='replace'
    )


# --- the data ------------------------------------------------------------------------------------------------


def _poems() -> ws.Dataset | None:
    """train.csv without `mixed` (dev has none) minus a stratified untouched slice of 150 is the pool; dev.csv."""
    if not (SHARED / 'poem_sentiment' / 'train.csv').is_file():
        return None
    train = pd.read_csv(SHARED / 'poem_sentiment' / 'train.csv')
    dev = pd.read_csv(SHARED / 'poem_sentiment' / 'dev.csv')
    train = train[train['label'] != 'mixed'].reset_index(drop=True)
    untouched = _stratified(train, 'label', None, 150 / len(train), seed=0)
    train = train.assign(
        split=['untouched' if u else 'train' for u in untouched], id=lambda f: 'tr' + f['id'].astype(str)
    )
    dev = dev.assign(split='dev', id=lambda f: 'dev' + f['id'].astype(str))
    return _import('bench_poems', pd.concat([train, dev])[['id', 'text', 'label', 'split']])


def _banking() -> ws.Dataset | None:
    """train.csv minus a stratified dev (3 per intent) and untouched slice (5 per intent) is the pool."""
    if not (SHARED / 'banking77' / 'train.csv').is_file():
        return None
    frame = pd.read_csv(SHARED / 'banking77' / 'train.csv').rename(columns={'category': 'label'})
    frame['id'] = [f'b{i:05d}' for i in range(len(frame))]
    dev = _stratified(frame, 'label', 3, None, seed=0)
    rest = frame[~dev]
    untouched = frame.index.isin(rest[_stratified(rest, 'label', 5, None, seed=1)].index)
    frame['split'] = ['dev' if d else 'untouched' if u else 'train' for d, u in zip(dev, untouched)]
    return _import('bench_banking', frame)


def _fetched(name: str, prefix: str, dev_from: str, dev: int, untouched_from: str, untouched: int) -> ws.Dataset | None:
    """A set from bench/data: upstream `train` is the pool; `dev` rows per label of `dev_from` are dev, and
    `untouched` per label of `untouched_from` (the rest of it, if the same split) the untouched slice."""
    path = DATA / name / 'data.csv'
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    frame['id'] = [f'{prefix}{i:05d}' for i in range(len(frame))]
    source = frame[frame['split'] == dev_from]
    picked_dev = source[_stratified(source, 'label', dev, None, seed=0)]
    rest = frame[(frame['split'] == untouched_from) & ~frame.index.isin(picked_dev.index)]
    picked = rest[_stratified(rest, 'label', untouched, None, seed=1)]
    frame['split'] = [
        'dev' if i in picked_dev.index else 'untouched' if i in picked.index else 'train' if s == 'train' else 'unused'
        for i, s in zip(frame.index, frame['split'])
    ]
    return _import(f'bench_{name}', frame[frame['split'] != 'unused'])


def _snips() -> ws.Dataset | None:
    """Upstream validate gives dev (20 per intent) and the untouched slice (50 of the other 80 per intent)."""
    return _fetched('snips', 's', 'validate', 20, 'validate', 50)


def _clinc() -> ws.Dataset | None:
    """Dev: 2 per intent of upstream val; untouched: 3 per intent of upstream test."""
    return _fetched('clinc150', 'c', 'val', 2, 'test', 3)


def _e2e() -> ws.Dataset | None:
    """MRs of e2e_nlg's dev set, shuffled: 300 are the pool (first reference as the demo's sentence), 80 dev, the
    remaining 167 untouched; dev and untouched are scored against every reference."""
    path = SHARED / 'e2e_nlg' / 'dev_grouped.jsonl'
    if not path.is_file():
        return None
    items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    random.Random(0).shuffle(items)
    rows = []
    for i, item in enumerate(items):
        split = 'train' if i < 300 else 'dev' if i < 380 else 'untouched'
        expected = item['refs'][0] if split == 'train' else item['refs']
        rows.append({'id': f'e{i:03d}', 'mr': item['mr'], 'ref': expected, 'split': split})
    return ws.import_dataset(
        'bench_e2e', rows, input='mr', expected='ref', split='split', id='id', task='text', if_exists='replace'
    )


LABEL_SETS: list[tuple[str, Callable[[], ws.Dataset | None], str]] = [
    ('poems', _poems, 'poems'),
    ('banking', _banking, 'intent'),
    ('snips', _snips, 'intent'),
    ('clinc150', _clinc, 'intent'),
]


# --- measuring -----------------------------------------------------------------------------------------------


def _evaluate(version: ws.Version, dataset: ws.Dataset, split: str) -> tuple[dict[str, Any], dict[str, float]]:
    """Evaluate a version; return its predictions by example id and what it cost: calls, wall and model seconds
    per row, prompt tokens per row."""
    local = backends.get_backend('local')
    before = local.calls
    run, wall = _timed(lambda: ws.evaluate(version, dataset, split, progress=False))
    rows = run.rows()
    n = max(len(rows), 1)
    cost = {
        'calls': local.calls - before,
        'row_s': wall / n,
        'model_s': float(rows['latency_s'].fillna(0).sum()) / n,
        'prompt_tokens': float(rows['prompt_tokens'].fillna(0).mean()),
    }
    return dict(zip(rows['example_id'], rows['prediction'])), cost


def _p(p: float) -> str:
    return 'p < 0.001' if p < 0.001 else f'p = {p:.3f}'


def _versus(metric: Any, a: dict[str, Any], b: dict[str, Any], names: tuple[str, str]) -> str:
    """b against a on the untouched slice: the difference in points, its 95% interval, and p."""
    result = verdict(metric, a, b, split='untouched', names=names)
    return f'{result.diff * 100:+.1f} [{result.ci_low * 100:+.1f}, {result.ci_high * 100:+.1f}], {_p(result.p_value)}'


def _interval(metric: Any, predictions: dict[str, Any], task: str) -> tuple[float, float]:
    ids = list(metric.expected)
    if task == 'choice':
        truth = [str(metric.expected[i]) for i in ids]
        return label_metric_interval(metric.name, truth, [predictions.get(i) for i in ids])
    return bootstrap_interval([metric.per_example(predictions.get(i), metric.expected[i]) for i in ids])


def _describe(version: ws.Version) -> str:
    policy, out = version.demo_policy, version.output
    demos = f'nearest {policy["k"]}' if policy else f'{len(version.demos)} fixed demos'
    if out['kind'] != 'choice':
        return demos
    over = "neighbours' labels" if out.get('restrict') else 'all labels'
    vote = f', vote {out["vote"]:g}' if out.get('vote') else ''
    return f'{demos}, {out.get("decode", "mask")} over {over}{vote}'


def _hand_written(name: str, dataset: ws.Dataset, template: str) -> ws.Version:
    if dataset.task == 'choice':
        return ws.create_version(
            f'bench_{name}', template=TEMPLATES[template], demos=dataset.demos(per_label=1),
            output=ws.choice(dataset.labels()), note='hand-written: one demo per label',
        )  # fmt: skip
    return ws.create_version(
        f'bench_{name}', template=TEMPLATES[template], demos=dataset.demos(per_label=2), output=ws.text(),
        params={'max_tokens': 64, 'stop': ['\n'], 'temperature': 0.0, 'seed': 0}, note='hand-written: two demos',
    )  # fmt: skip


def bench_set(name: str, dataset: ws.Dataset, template: str) -> list[str]:
    """Optimize the hand-written baseline of one set and score everything on its untouched slice."""
    baseline = _hand_written(name, dataset, template)
    task = dataset.task
    metric_name = 'macro_f1' if task == 'choice' else 'rouge_l'
    expected = {str(r['example_id']): r['expected'] for r in dataset.rows('untouched')}
    metric = build_metric(metric_name, task=task, expected=expected)
    accuracy = build_metric('accuracy', task='choice', expected=expected) if task == 'choice' else None
    base_pred, base_cost = _evaluate(baseline, dataset, 'untouched')
    print(f'{dataset.name}: optimizing ({MINUTES:g} min)...', file=sys.stderr, flush=True)
    res, wall = _timed(
        lambda: optimize(
            baseline, dataset, metric=metric_name, budget={'max_minutes': MINUTES}, test=None, progress=False
        )
    )
    refs = reference_baselines(dataset, 'untouched')
    dev_refs = reference_baselines(dataset, 'dev')
    splits = dataset.splits()
    head = (
        f'### {dataset.name}: {len(dataset.labels()) if task == "choice" else "text"}'
        f'{" labels" if task == "choice" else ""}; pool {splits["train"]:,}, dev {splits["dev"]:,}, '
        f'untouched {splits["untouched"]:,}'
    )
    lines = [
        head, '',
        f'| version | dev {metric_name} | untouched {metric_name} [95% CI] |'
        + (' untouched accuracy |' if accuracy else '')
        + ' vs hand-written: points [95% CI], p | vs the reference vote: points [95% CI], p | calls | s a row |',
        '|---|---:|---|' + ('---:|' if accuracy else '') + '---|---|---:|---:|',
    ]  # fmt: skip
    vote = refs.get('knn_vote') or refs.get('nearest_output')

    def row(label: str, dev: str, pred: dict[str, Any], cost: dict[str, float] | None, against_vote: bool) -> str:
        lo, hi = _interval(metric, pred, task)
        vs_base = '' if pred is base_pred else _versus(metric, base_pred, pred, (baseline.id, label))
        vs_vote = _versus(metric, vote.predictions, pred, (vote.name, label)) if against_vote and vote else ''
        acc = f' {accuracy.score(pred):.3f} |' if accuracy else ''
        calls = f'{cost["calls"]:,}' if cost else '0'
        speed = f'{cost["row_s"]:.2f}' if cost else ''
        return f'| {label} | {dev} | {metric.score(pred):.3f} [{lo:.3f}, {hi:.3f}] |{acc} {vs_base} | {vs_vote} | {calls} | {speed} |'

    lines.append(row(f'hand-written ({_describe(baseline)})', f'{res.baseline_score:.3f}', base_pred, base_cost, True))
    for ref in refs.items:
        dev_ref = dev_refs.get(ref.kind)
        dev_value = f'{dev_ref.metrics[metric_name]:.3f}' if dev_ref else ''
        lines.append(row(f'{ref.name} (reference, no model)', dev_value, ref.predictions, None, ref is not vote))
    details = [f'- plan: {res.plan}', f'- decision: {res.decision}']
    if res.candidate is None:
        lines.append(f'| no candidate scored | | | | | | {res.calls:,} | |')
    else:
        cand_pred, cand_cost = _evaluate(res.candidate, dataset, 'untouched')
        accepted = 'accepted' if res.accepted else 'not accepted'
        label = f'optimized: {_describe(res.candidate)} ({accepted})'
        # the run's figures for it: its version may be one made before with the same content, with that one's meta
        lines.append(row(label, f'{res.candidate_score:.3f} (n = {res.candidate_n})', cand_pred, cand_cost, True))
        details.append(
            f'- the optimized version on the untouched slice: {cand_cost["row_s"]:.2f} s a row '
            f'({cand_cost["model_s"]:.2f} s of it in the model, {cand_cost["prompt_tokens"]:.0f} prompt tokens a row)'
        )
    details.append(
        f'- optimization: {wall:.0f} s wall, {res.calls:,} model calls for {res.requests:,} requests, '
        f'{res.n_trials} trials, stopped by {res.stopped_by or "nothing (the race finished)"}'
    )
    details.append(f'- seconds a request by candidate, as the race measured them: {_speeds(res.trials)}')
    return [*lines, '', *details]


def _speeds(trials: pd.DataFrame) -> str:
    """Seconds per model call of each group of candidates (its first trial pays for the group's requests)."""
    paid = trials[trials['calls'] > 0]
    spent: dict[str, list[float]] = {}
    for _, t in paid.iterrows():
        demos, out = t['demos'], t['output'] or {}
        what = f'nearest {demos["k"]}' if isinstance(demos, dict) and 'k' in demos else 'baseline'
        if out:
            what += f' {out.get("decode", "mask")} {"neighbours" if out.get("restrict") else "all"}'
        total = spent.setdefault(what, [0.0, 0.0])
        total[0] += float(t['wall_s'])
        total[1] += float(t['calls'])
    return '; '.join(f'{k} {w / max(c, 1):.2f}' for k, (w, c) in sorted(spent.items(), key=lambda kv: kv[0]))


def bench_anytime(dataset: ws.Dataset) -> list[str]:
    """A 3-minute budget on banking77: what the run returns. Its answers are forgotten afterwards, so the 15-minute
    run that follows starts from an empty request store."""
    baseline = _hand_written('banking', dataset, 'intent')
    res, wall = _timed(lambda: optimize(baseline, dataset, budget={'max_minutes': 3}, test=None, progress=False))
    store = tables.requests()
    store.delete(where=store.first_version_id.startswith(f'{res.run_id}/'))
    scored = res.trials.drop_duplicates('candidate')
    top = res.candidate
    return [
        '### banking77 with a 3-minute budget',
        '',
        f'- returned in {wall:.0f} s: {"a scored candidate, " + _describe(top) if top else "no candidate"} '
        f'(dev {res.candidate_score:.3f} on {res.candidate_n} rows; '
        f'{"accepted" if res.accepted else "not accepted"}), stopped by {res.stopped_by or "nothing"}'
        if top
        else f'- returned in {wall:.0f} s with no candidate: {res.decision}',
        f'- {len(scored)} of {res.plan.candidates + 1 if res.plan else "?"} candidates scored, {res.calls:,} model '
        f'calls; the decision: {res.decision}',
        f'- plan: {res.plan}',
    ]


def bench_speed(dataset: ws.Dataset) -> list[str]:
    """Evaluate a nearest-8 version (masked over all 77 labels, the issue's) on the 385 untouched banking77 rows,
    cold, and say where the time goes: retrieval, the model (prompt and label tokens), the rest."""
    base = _hand_written('banking', dataset, 'intent')
    rows = dataset.rows('untouched')
    lines = [
        "### Where a nearest-8 version's time goes (banking77, 385 untouched rows, cold, 2 cores, no busy loop)",
        '',
        '| version | s a row | retrieval s a row | model s a row | rest s a row | prompt tokens a row | calls |',
        '|---|---:|---:|---:|---:|---:|---:|',
    ]
    labels = dataset.labels()
    variants = [
        ('masked over all 77 labels', ws.choice(labels)),
        ("masked over the neighbours' labels", ws.choice(labels, restrict='demos')),
        ("ranked over the neighbours' labels", ws.choice(labels, decode='rank', restrict='demos')),
    ]
    for what, output in variants:
        version = ws.edit(base, demos=ws.nearest(dataset, k=8), output=output, note=f'nearest 8, {what}')
        _, retrieval = _timed(lambda v=version: retrieve(v.demo_policy, rows, dataset=dataset.name))
        _, cost = _evaluate(version, dataset, 'untouched')
        per = retrieval / len(rows)
        rest = cost['row_s'] - per - cost['model_s']
        lines.append(
            f'| nearest 8, {what} | {cost["row_s"]:.2f} | {per:.3f} | {cost["model_s"]:.2f} | {rest:.2f} | '
            f'{cost["prompt_tokens"]:.0f} | {cost["calls"]:,} |'
        )
    return lines


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
    reference, wall = _timed(lambda: optimize(baseline, dataset, **args))
    first = answered_by_run(reference.run_id)
    store = tables.requests()
    store.delete(where=store.first_version_id.startswith(f'{reference.run_id}/'))
    trials, runs = tables.trials(), tables.optimizer_records()
    trials.delete(where=trials.run_id == reference.run_id)
    runs.delete(where=runs.run_id == reference.run_id)
    code = f'from workspace.optimization.optimize import optimize\noptimize({baseline.id!r}, {dataset.name!r}, **{args!r})\n'
    child = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, env=dict(os.environ))
    try:
        while answered_by_run(reference.run_id) < first // 2 and child.poll() is None:
            time.sleep(0.2)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    killed_at = answered_by_run(reference.run_id)
    before = local.calls
    resumed, resumed_wall = _timed(lambda: optimize(baseline, dataset, **args))
    calls = local.calls - before
    same = resumed.decision == reference.decision and getattr(resumed.candidate, 'id', None) == getattr(
        reference.candidate, 'id', None
    )
    return [
        '### Resume (bootstrap_random_search on the bundled tickets, max_candidates 3)',
        '',
        '| run | model calls | wall s |',
        '|---|---:|---:|',
        f'| uninterrupted | {reference.calls} | {wall:.1f} |',
        f'| same run in a subprocess, killed (SIGKILL) | {killed_at} | |',
        f'| started again | {calls} | {resumed_wall:.1f} |',
        '',
        f'- repeated calls: **{killed_at + calls - first}** (killed + resumed - uninterrupted); the same decision and '
        f'top candidate as the uninterrupted run: **{same}**',
    ]


def run() -> list[str]:
    wanted = [n for n in os.environ.get('BENCH_SETS', '').split(',') if n]
    lines = ['## Optimization (`bench/optimize.py`)', '', ' '.join(__doc__.split('\n\n')[1].split()), '']
    banking = _banking() if not wanted or 'banking' in wanted else None
    if banking is not None and os.environ.get('BENCH_SPEED', '1') != '0':
        # the speed target is for 2 cores: measured before the busy loop starts
        lines += [*bench_speed(banking), '']
    busy = busy_loop()
    lines += [
        f'From here on a busy loop (pid {busy.pid}) kept one of the {os.cpu_count()} cores busy; budget {MINUTES:g} '
        'minutes per set.',
        '',
    ]
    try:
        for name, make, template in [*LABEL_SETS, ('e2e', _e2e, 'e2e')]:
            if wanted and name not in wanted:
                continue
            dataset = banking if name == 'banking' else make()
            if dataset is None:
                lines += [f'({name} skipped: its data is not under {SHARED} or {DATA}; see bench/DATA.md)', '']
                continue
            if name == 'banking':  # before the 15-minute run, whose answers it must not give for free
                lines += [*bench_anytime(dataset), '']
            lines += [*bench_set(name, dataset, template), '']
        if not wanted or 'resume' in wanted:
            tickets = ws.import_dataset(
                'bench_opt_tickets', ROOT / 'datasets' / 'support_tickets.csv', input=['text'], expected='category',
                split='split', id='id', if_exists='replace',
            )  # fmt: skip
            lines += bench_resume(tickets)
    finally:
        busy.kill()
        busy.wait()
    return lines


if __name__ == '__main__':
    print('\n'.join(run()))
