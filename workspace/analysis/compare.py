"""Comparing versions on the same examples: a metrics table with paired intervals, flips, significance.

Everything here computes and returns data (DataFrames, dataclasses); `views.py` renders it and `widgets.py`
wires it to controls.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from workspace.core import metrics, rules, stats
from workspace.core.baselines import References, reference_baselines
from workspace.core.datasets import Dataset, get_dataset
from workspace.core.evaluate import evaluate
from workspace.core.labels import set_label
from workspace.core.runs import Run, judge_score_columns, main_score_name
from workspace.core.versions import Version, get_version
from workspace.display.formats import p_phrase, points
from workspace.display.results import render_record
from workspace.errors import ComparisonError
from workspace.storage import costs, reads, store

__all__ = [
    'Change',
    'VersionComparison',
    'build_comparison',
    'compare_table',
    'flips',
    'significance',
    'row_score_name',
    'prompts_for',
    'version_labels',
    'Promotion',
    'promote_if_better',
]

log = logging.getLogger(__name__)

Change = Literal['fixed', 'broken', 'changed', 'same']
_ROW_SCORE = {'choice': 'exact_match', 'text': 'rouge_l', 'json': 'json_valid'}


def row_score_name(task: str) -> str:
    """Return the per-example score a task's main metric averages: exact match, ROUGE-L or JSON validity."""
    return _ROW_SCORE[task]


def _frame(run: Run) -> pd.DataFrame:
    """Return the run's predictions by example id, blocked rows scored 0 and the row score as `score` (derived once
    per pinned rows: take a copy, e.g. `.loc[ids]`, before changing it)."""

    def derive() -> pd.DataFrame:
        score = row_score_name(run.task)
        frame, _ = rules.apply_blocks(run.predictions().set_index('example_id', drop=False), [score])
        frame['score'] = frame[score].fillna(0.0).astype(float)
        return frame

    return run.derived('comparison frame', derive)


def _predictions(frame: pd.DataFrame) -> list[str | None]:
    return [None if pd.isna(p) else str(p) for p in frame['prediction']]


def _check_same_examples(a: Run, b: Run) -> tuple[list[str], list[str]]:
    """Raise ComparisonError unless both runs cover the same dataset and split; return (common ids, notes)."""
    if a.dataset != b.dataset or a.split != b.split:
        raise ComparisonError(
            f'{a.version.id} was evaluated on {a.dataset}/{a.split or "all"} and {b.version.id} on '
            f'{b.dataset}/{b.split or "all"}; compare runs of the same dataset and split '
            f'(ws.evaluate(version, {a.dataset!r}, {a.split!r}) gives one)'
        )
    in_b = set(b.example_ids)
    common = [ex for ex in a.example_ids if ex in in_b]
    notes = []
    only_a, only_b = len(a.example_ids) - len(common), len(in_b) - len(common)
    if only_a or only_b:
        notes.append(
            f"compared on the {len(common)} examples both runs cover ({only_a} only in {a.version.id}'s run, "
            f"{only_b} only in {b.version.id}'s); evaluate both again to cover all rows"
        )
    if not common:
        raise ComparisonError(f'the runs of {a.version.id} and {b.version.id} share no examples')
    return common, notes


def _changes(a: pd.DataFrame, b: pd.DataFrame) -> pd.Series:
    better, worse = b['score'] > a['score'], b['score'] < a['score']
    differs = a['prediction'].fillna('\0').astype(str) != b['prediction'].fillna('\0').astype(str)
    differs |= a['error'].notna() != b['error'].notna()
    return pd.Series(np.select([better, worse, differs], ['fixed', 'broken', 'changed'], default='same'), index=a.index)


@reads.scoped
def flips(run_a: Run, run_b: Run) -> pd.DataFrame:
    """Return one row per example both runs cover: inputs, expected, both predictions, scores and errors, and
    `change`: 'fixed' (b better), 'broken' (b worse), 'changed' (other output, same score) or 'same'.

    Rows where a model call failed are kept, with the error, and score 0.

    >>> flips(run_v1, run_v3).query("change == 'broken'")
    """
    common, _ = _check_same_examples(run_a, run_b)
    a, b = _frame(run_a).loc[common], _frame(run_b).loc[common]
    inputs = list(get_dataset(run_a.dataset).inputs)
    out = a[['example_id', *inputs, 'expected']].copy()
    for side, frame in (('a', a), ('b', b)):
        for column in ('prediction', 'score', 'error', 'request_hash'):
            out[f'{column}_{side}'] = frame[column]
    out['change'] = _changes(a, b)
    return out.reset_index(drop=True)


def significance(run_a: Run, run_b: Run, *, confidence: float = 0.95, resamples: int = 10_000) -> stats.Comparison:
    """Return the paired comparison of run b against run a on their common examples: difference of the main
    score, bootstrap interval, p-value (McNemar's exact test for labels) and a plain-words verdict.

    >>> print(significance(run_v1, run_v3).verdict)
    """
    common, _ = _check_same_examples(run_a, run_b)
    a, b = _frame(run_a).loc[common], _frame(run_b).loc[common]
    task = run_a.task
    return stats.compare_scores(
        a['score'].tolist(),
        b['score'].tolist(),
        name_a=run_a.version.id,
        name_b=run_b.version.id,
        split=run_a.split or 'all rows',
        metric=main_score_name(task),
        binary=task != 'text',
        confidence=confidence,
        resamples=resamples,
    )


def _scorer_means(frame: pd.DataFrame, scorers: Sequence[str], judged: Sequence[str]) -> dict[str, float]:
    """Return the mean of each scorer column besides the main one; a judge's over the rows it judged (with
    `<column>_n`, how many), as a judge scores only where it was asked. A judge that judged nothing is left out
    of versions that have none, and shows as n = 0 beside versions that have some."""
    means: dict[str, float] = {}
    for name in scorers:
        if name not in frame.columns:
            continue
        values = pd.to_numeric(frame[name], errors='coerce')
        if name in judged:
            present = values.dropna()
            means[name] = float(present.mean()) if len(present) else float('nan')
            means[f'{name}_n'] = len(present)
        else:
            means[name] = float(values.fillna(0.0).mean())
    return means


@dataclass(frozen=True)
class VersionComparison:
    """Several versions evaluated on the same dataset split, aligned example by example."""

    dataset: Dataset
    split: str | None
    runs: list[Run]
    baseline: str
    common_ids: list[str]
    frames: dict[str, pd.DataFrame]
    table: pd.DataFrame
    pairwise: dict[str, stats.Comparison]
    notes: list[str] = field(default_factory=list)
    #: Scorer columns besides the main score (custom scorers, judges), each a column of `table` with its mean; a
    #: judge's mean is over the rows it judged, counted in `<column>_n`.
    scorers: list[str] = field(default_factory=list)
    #: What the same examples score without a model: the majority label, the k-nearest vote, the nearest
    #: training output (`workspace.core.baselines`), so a version's value over its retrieval is visible.
    references: References | None = None

    @property
    def task(self) -> str:
        return self.dataset.task

    @property
    def version_ids(self) -> list[str]:
        return [run.version.id for run in self.runs]

    def run(self, version_id: str) -> Run:
        """Return the run of one compared version."""
        for run in self.runs:
            if run.version.id == version_id:
                return run
        raise ComparisonError(f'{version_id!r} is not in this comparison; it has {", ".join(self.version_ids)}')

    def version(self, version_id: str) -> Version:
        return self.run(version_id).version

    def flips(self, candidate: str, baseline: str | None = None) -> pd.DataFrame:
        """Return the flips of `candidate` against the baseline (or another compared version)."""
        return flips(self.run(baseline or self.baseline), self.run(candidate))

    def labels(self) -> list[str]:
        """Return the label order for per-category views: the baseline's label set, then any other label seen."""
        first = self.version(self.baseline).labels
        seen = set(first)
        rest = set()
        for frame in self.frames.values():
            rest |= {str(v) for v in frame['expected']} | {str(p) for p in frame['prediction'].dropna()}
        return first + sorted(rest - seen)

    def with_baseline(self, baseline: str, *, confidence: float = 0.95, resamples: int = 10_000) -> VersionComparison:
        """Return the same comparison measured against another baseline (no model call)."""
        cmp = measure(self.dataset, self.split, self.runs, baseline, confidence=confidence, resamples=resamples)
        return dataclasses.replace(cmp, references=self.references)


def _common_examples(base: Run, runs: Sequence[Run]) -> tuple[list[str], list[str]]:
    """Return the examples every run covers, in the baseline's order, and notes on the examples some miss."""
    common, notes = list(base.example_ids), []
    for run in runs:
        shared, more = _check_same_examples(base, run)
        covered = set(shared)
        common = [ex for ex in common if ex in covered]
        notes += more
    return common, notes


def _headline(frame: pd.DataFrame, task: str, main: str) -> dict[str, Any]:
    """Return a version's n, main score with its own 95% interval, and (labels) macro-F1."""
    row: dict[str, Any] = {'n': len(frame), main: float(frame['score'].mean())}
    # The headline's own 95% interval: Wilson for a proportion (accuracy, validity), bootstrap for a mean.
    if task == 'text':
        row[f'{main}_low'], row[f'{main}_high'] = stats.bootstrap_interval(frame['score'].tolist())
    elif len(frame):
        row[f'{main}_low'], row[f'{main}_high'] = stats.proportion_interval(int(frame['score'].sum()), len(frame))
    if task == 'choice':
        expected = [str(e) for e in frame['expected']]
        row['macro_f1'] = metrics.classification_summary(expected, _predictions(frame))['macro_f1']
    return row


def _usage(run: Run, frame: pd.DataFrame, scorers: Sequence[str], judged: Sequence[str]) -> dict[str, Any]:
    """Return a version's latency, tokens, calls, reuse, errors, cost, rule tallies and other scorers' means."""
    return dict(
        mean_latency_s=float(frame['latency_s'].fillna(0).mean()),
        mean_tokens=float((frame['prompt_tokens'].fillna(0) + frame['completion_tokens'].fillna(0)).mean()),
        calls=run.calls,
        reused=run.reused,
        errors=int(frame['error'].notna().sum()),
        judge_calls=run.judge_calls,
        cost_usd=costs.run_cost(costs.frame_costs(frame, run.version.model)),
        **rules.tally(frame).metrics(),  # rows blocked and violations per rule, when there are rules
        **_scorer_means(frame, scorers, judged),
    )


def _against_baseline(
    base: pd.DataFrame, frame: pd.DataFrame, cmp: stats.Comparison, task: str, confidence: float, resamples: int
) -> dict[str, Any]:
    """Return a candidate's paired differences to the baseline: the main score's (from `cmp`), macro-F1's
    (labels) and latency's, each with its interval, and the verdict."""
    row: dict[str, Any] = dict(diff=cmp.diff, ci_low=cmp.ci_low, ci_high=cmp.ci_high, p_value=cmp.p_value)
    if task == 'choice':
        d, lo, hi = stats.macro_f1_diff_ci(
            [str(e) for e in base['expected']],
            _predictions(base),
            _predictions(frame),
            confidence=confidence,
            resamples=min(resamples, 2_000),
            seed=0,
        )
        row.update(macro_f1_diff=d, macro_f1_ci_low=lo, macro_f1_ci_high=hi)
    latency = stats.paired_bootstrap_ci(
        base['latency_s'].fillna(0).tolist(),
        frame['latency_s'].fillna(0).tolist(),
        confidence=confidence,
        resamples=min(resamples, 2_000),
    )
    row.update(latency_diff=latency[0], latency_ci_low=latency[1], latency_ci_high=latency[2])
    row['verdict'] = cmp.verdict
    return row


def _version_notes(run: Run, frame: pd.DataFrame, row: Mapping[str, Any], task: str) -> list[str]:
    """Return what a reader of the table should know about one version: a collapse onto one answer, errors."""
    notes = []
    if task == 'choice':
        skew = metrics.label_skew([str(e) for e in frame['expected']], _predictions(frame))
        if skew is not None:
            notes.append(f'{run.version.id} {skew["message"]}: it may have collapsed onto one answer')
    if row['errors']:
        notes.append(f'{run.version.id} has {row["errors"]} rows with a model error; they count as wrong')
    return notes


@reads.scoped
def measure(
    dataset: Dataset, split: str | None, runs: list[Run], baseline: str, *, confidence: float, resamples: int
) -> VersionComparison:
    """Compare runs already made on the same examples against the baseline's: metrics with paired intervals.

    No model call; every interval against the baseline resamples the same draws (`stats.shared_draws`), and one
    measured before on the same scores is remembered, so measuring again (another baseline, a refresh) is cheap.
    """
    by_id = {run.version.id: run for run in runs}
    if baseline not in by_id:
        raise ComparisonError(f'baseline {baseline!r} is not among the compared versions: {", ".join(by_id)}')
    common, notes = _common_examples(by_id[baseline], runs)
    frames = {run.version.id: _frame(run).loc[common] for run in runs}
    task = dataset.task
    main = main_score_name(task)
    judged = judge_score_columns(dataset.name)
    scorers = [c for c in by_id[baseline].score_columns() if c != row_score_name(task)]
    base = frames[baseline]
    rows, pairwise = [], {}
    with stats.shared_draws():
        for run in runs:
            frame = frames[run.version.id]
            row = {'version': run.version.id, **_headline(frame, task, main), **_usage(run, frame, scorers, judged)}
            if run.version.id == baseline:
                row['verdict'] = 'baseline'
            else:
                pairwise[run.version.id] = cmp = stats.compare_scores(
                    base['score'].tolist(),
                    frame['score'].tolist(),
                    name_a=baseline,
                    name_b=run.version.id,
                    split=split or 'all rows',
                    metric=main,
                    binary=task != 'text',
                    confidence=confidence,
                    resamples=resamples,
                )
                row.update(_against_baseline(base, frame, cmp, task, confidence, resamples))
            rows.append(row)
            notes += _version_notes(run, frame, row, task)
    table = pd.DataFrame(rows).set_index('version')
    for name in judged:  # a judge no compared version was asked for says nothing here
        if f'{name}_n' in table.columns and not table[f'{name}_n'].any():
            table = table.drop(columns=[name, f'{name}_n'])
    shown = [c for c in scorers if c in table.columns]
    return VersionComparison(
        dataset, split, runs, baseline, common, frames, table, pairwise, list(dict.fromkeys(notes)), shown
    )


@reads.scoped
def build_comparison(
    dataset: Dataset | str,
    versions: Sequence[Version | str],
    split: str | None = None,
    *,
    baseline: Version | str | None = None,
    progress: bool | Callable[[int, int], None] = False,
    confidence: float = 0.95,
    resamples: int = 10_000,
    judges: Sequence[str] | Literal['all'] | None = None,
) -> VersionComparison:
    """Evaluate each version on the split (incrementally: only missing requests reach the model) and align them.

    The baseline defaults to the first version. Versions are references like 'ticket_router@production'.
    `judges` names judge columns of the dataset to judge the rows with (see `evaluate`); by default only those
    attached with `every_evaluation=True` run. Scores judged earlier show either way.

    >>> cmp = build_comparison('support_tickets', ['ticket_router@production', 'ticket_router:v3'], 'dev')
    """
    ds = get_dataset(dataset)
    given = [get_version(v) for v in versions]
    if not given:
        raise ComparisonError('give the versions to compare, e.g. [baseline, candidate]')
    # The same version twice (an optimizer that kept its baseline, a label on a listed version) is shown once.
    resolved = list({v.id: v for v in given}.values())
    runs = [evaluate(v, ds, split, judges=judges, progress=progress) for v in resolved]
    base = get_version(baseline).id if baseline is not None else resolved[0].id
    cmp = measure(ds, split, runs, base, confidence=confidence, resamples=resamples)
    notes = list(cmp.notes)
    if len(resolved) < len(given):
        repeated = sorted({v.id for v in given if [g.id for g in given].count(v.id) > 1})
        notes.append(f'{", ".join(repeated)} given more than once: compared once')
    if len(resolved) == 1:
        notes.append(f'only {resolved[0].id} to show: give another version to compare it with')
    refs = reference_baselines(ds, split, example_ids=cmp.common_ids)
    return dataclasses.replace(cmp, notes=notes, references=refs or None)


def compare_table(
    dataset: Dataset | str,
    versions: Sequence[Version | str],
    split: str | None = None,
    *,
    baseline: Version | str | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Return one row per version: main score, macro-F1, latency, tokens, calls, reuse, errors, and each
    difference to the baseline with its paired bootstrap interval, p-value and verdict.

    >>> compare_table(tickets, ['ticket_router:v1', 'ticket_router:v3'], 'dev')
    """
    return build_comparison(dataset, versions, split, baseline=baseline, confidence=confidence).table


def prompts_for(hashes: Sequence[str]) -> dict[str, str]:
    """Return the rendered prompt of each request hash, from the request store."""
    found = store.requests_for(h for h in hashes if isinstance(h, str))
    return {key: row['request'].get('prompt', '') for key, row in found.items()}


def version_labels(prompts: Sequence[str]) -> dict[str, list[str]]:
    """Return the labels on each version of `prompts` (version id to sorted label names), from the labels table."""
    from workspace.core.labels import list_labels

    found: dict[str, list[str]] = {}
    for prompt in dict.fromkeys(prompts):
        on = list_labels(prompt)
        for version, label in zip(on['version_id'], on['label']):
            found.setdefault(version, []).append(label)
    return {version: sorted(names) for version, names in found.items()}


@dataclass(frozen=True)
class Promotion:
    """What `promote_if_better` decided, by which metric, and the comparison it decided on."""

    promoted: bool
    label: str
    candidate: str
    baseline: str
    verdict: str
    diff: float
    p_value: float
    metric: str = 'accuracy'

    def __str__(self) -> str:
        action = f'moved {self.label} to {self.candidate}' if self.promoted else f'kept {self.label} on {self.baseline}'
        return f'{action} (decided by {self.metric}): {self.verdict}'

    def _repr_html_(self) -> str:
        return render_record(
            'Promotion' if self.promoted else 'No promotion',
            [
                ('label', self.label),
                ('candidate', self.candidate),
                ('baseline', self.baseline),
                ('metric', self.metric),
                ('verdict', str(self)),
            ],
        )


def _label_metric_verdict(runs: Sequence[Run], metric: str, split: str | None, confidence: float) -> stats.Comparison:
    """Compare two runs by a metric of the whole split (macro-F1, balanced accuracy), paired (see
    `stats.compare_label_metric`), and say it in the words of the optimizer's test sentence, naming the metric."""
    common, _ = _check_same_examples(*runs)
    a, b = (_frame(r).loc[common] for r in runs)
    result = stats.compare_label_metric(
        metric, [str(e) for e in a['expected']], _predictions(a), _predictions(b), confidence=confidence
    )
    names = (runs[0].version.id, runs[1].version.id)
    detail = (
        f'{metric} {result.value_b:.3f} vs {result.value_a:.3f} ({points(result.diff)} points, '
        f'{confidence * 100:.3g}% CI {points(result.ci_low)} to {points(result.ci_high)}, {p_phrase(result.p_value)}, '
        f'n = {result.n})'
    )
    alpha = 1 - confidence
    significant = result.p_value < alpha and (result.ci_low > 0 or result.ci_high < 0)
    where = split or 'all rows'
    if significant:
        word = 'better' if result.diff > 0 else 'worse'
        verdict = f'{names[1]} is {word} than {names[0]} on {where}: {detail}'
    else:
        verdict = f'no detectable difference between {names[1]} and {names[0]} on {where}: {detail}'
    return stats.Comparison(
        n=result.n,
        metric=metric,
        mean_a=result.value_a,
        mean_b=result.value_b,
        diff=result.diff,
        ci_low=result.ci_low,
        ci_high=result.ci_high,
        p_value=result.p_value,
        significant=significant,
        verdict=verdict,
    )


def promote_if_better(
    candidate: Version | str,
    label: str,
    *,
    dataset: Dataset | str,
    split: str | None,
    baseline: Version | str | None = None,
    confidence: float = 0.95,
    by: str | None = None,
    metric: str | None = None,
) -> Promotion:
    """Move `label` to `candidate` only if it is significantly better than `baseline` on a dataset split.

    The baseline defaults to the version the label points at now. Both are evaluated incrementally (only missing
    requests reach the model); the decision uses the paired test of `ws.significance` on the task's main score,
    or, with `metric='macro_f1'` or `'balanced_accuracy'` (label tasks), a paired permutation test of that metric
    over the split: pass the metric the optimizer chose by, so its test sentence and this decision agree. The
    verdict, naming the metric, is recorded in the label's history as its note.

    >>> promote_if_better(result.best, 'production', dataset=tickets, split='test', metric='macro_f1')
    """
    cand = get_version(candidate)
    base = get_version(f'{cand.prompt}@{label}' if baseline is None else baseline)
    runs = [evaluate(v, dataset, split, progress=False) for v in (base, cand)]
    task = get_dataset(dataset).task
    name = metric or main_score_name(task)
    if name in ('macro_f1', 'balanced_accuracy'):
        if task != 'choice':
            raise ComparisonError(f'metric {name!r} applies to label tasks; this dataset is a {task} task')
        result = _label_metric_verdict(runs, name, split, confidence)
    elif name == main_score_name(task):
        result = significance(*runs, confidence=confidence)
    else:
        raise ComparisonError(
            f'metric {name!r} cannot decide a promotion; use {main_score_name(task)!r}'
            + (", 'macro_f1' or 'balanced_accuracy'" if task == 'choice' else '')
        )
    better = result.significant and result.diff > 0 and cand.id != base.id
    if better:
        set_label(cand, label, note=f'{name}: {result.verdict}', by=by)
    return Promotion(better, label, cand.id, base.id, result.verdict, result.diff, result.p_value, name)
