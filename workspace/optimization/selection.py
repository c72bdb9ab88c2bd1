"""Choosing among an optimizer's candidates honestly: a metric of the whole split, degenerate candidates refused,
and a winner only when it beats the baseline by a paired test.

Measured on the embedded model: an optimizer scored by accuracy on an imbalanced split picks "always the majority
label" (poem_sentiment: 69 of 104 test rows are no_impact, and answering no_impact everywhere scores 0.663). So:

- label tasks are scored by a metric of the whole split (macro-F1 by default, or balanced accuracy), which a
  per-example average cannot express; DSPy's optimizers are given a class-balanced per-example proxy whose mean
  over a split equals its balanced accuracy, so their own search is not drawn to the majority label either;
- a candidate whose predictions pile onto one label, or whose macro-F1 falls while its accuracy rises, is flagged
  and never chosen unless the caller opts in;
- the best remaining candidate replaces the baseline only if it is better on dev by a paired permutation test at
  `alpha` (or by at least `margin`); otherwise the baseline stays, and the decision says why in words.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from udfs import scores
from workspace.core import metrics, stats
from workspace.core.runs import main_score_name
from workspace.errors import OptimizeError

__all__ = ['Metric', 'build_metric', 'candidate_flags', 'Decision', 'decide', 'Verdict', 'verdict']

#: A metric given as a function: (prediction, expected) in, a score in [0, 1] out, like a scorer.
MetricFn = Callable[[Any, Any], float]


@dataclass(frozen=True)
class Metric:
    """How candidates are scored: `score` on a split's predictions, `per_example` as DSPy's optimizers see it."""

    name: str
    split_level: bool  # a metric of the whole split (macro-F1, balanced accuracy, accuracy) rather than a mean
    per_example: MetricFn
    expected: Mapping[str, Any]  # the dev split's expected outputs, by example id

    def score(self, predictions: Mapping[str, Any]) -> float:
        """Return the metric of predictions (by example id) of the examples they cover."""
        ids = [ex for ex in predictions if ex in self.expected]
        if not ids:
            return 0.0
        if self.split_level:
            return metrics.split_metric(
                self.name, [str(self.expected[ex]) for ex in ids], [_label(predictions[ex]) for ex in ids]
            )
        return sum(self.per_example(predictions[ex], self.expected[ex]) for ex in ids) / len(ids)


def _label(value: Any) -> str | None:
    return None if value is None else str(value)


def build_metric(
    metric: str | MetricFn | None, *, task: str, expected: Mapping[str, Any], schema: Any = None
) -> Metric:
    """Return the metric named `metric` (or the task's default: macro-F1 for labels) for a dev split's `expected`
    outputs, or raise OptimizeError naming the known metrics."""
    if callable(metric):
        return Metric(getattr(metric, '__name__', 'custom'), False, metric, expected)
    name = metric or ('macro_f1' if task == 'choice' else main_score_name(task))
    if name in metrics.LABEL_METRICS:
        if task != 'choice':
            raise OptimizeError(
                f'metric {name!r} needs a label dataset, and this one is {task}; '
                f'use metric={main_score_name(task)!r} or another scorer'
            )
        return Metric(name, True, _balanced_match(expected) if name != 'accuracy' else _match, expected)
    try:
        info = scores.get_scorer(name)
    except KeyError as e:
        known = ', '.join(metrics.LABEL_METRICS)
        raise OptimizeError(f'{e.args[0]}; or {known}, or pass a function (prediction, expected) -> score') from None
    udf: Any = info.udf  # a Pixeltable UDF; py_fn is the plain Python function behind it
    if name == 'json_valid':
        return Metric(name, False, lambda prediction, _: float(udf.py_fn(prediction, schema)), expected)
    if not info.uses_expected:
        raise OptimizeError(
            f'scorer {name!r} needs knobs and cannot be an optimizer metric by name; pass a function instead'
        )
    return Metric(name, False, lambda prediction, wanted: float(udf.py_fn(prediction, wanted)), expected)


def _match(prediction: Any, expected: Any) -> float:
    return float(prediction is not None and str(prediction) == str(expected))


def _balanced_match(expected: Mapping[str, Any]) -> MetricFn:
    """Return exact match weighted by n / (k * n_label) over the dev split: its mean over dev is balanced accuracy,
    so an optimizer maximizing it gains nothing by answering the majority label."""
    counts: dict[str, int] = {}
    for value in expected.values():
        counts[str(value)] = counts.get(str(value), 0) + 1
    n, k = len(expected), max(1, len(counts))
    weight = {label: n / (k * count) for label, count in counts.items()}
    return lambda prediction, wanted: weight.get(str(wanted), 1.0) * _match(prediction, wanted)


def candidate_flags(
    predictions: Mapping[str, Any], baseline: Mapping[str, Any], expected: Mapping[str, Any]
) -> list[str]:
    """Return why a label candidate must not win, in words: one label takes most of its predictions while the
    expected labels do not, or its macro-F1 falls below the baseline's while its accuracy rises."""
    ids = [ex for ex in expected if ex in predictions]
    truth = [str(expected[ex]) for ex in ids]
    guess = [_label(predictions[ex]) for ex in ids]
    flags = []
    skew = metrics.label_skew(truth, guess)
    if skew is not None:
        flags.append(skew['message'])
    if all(ex in baseline for ex in ids) and ids:
        before = [_label(baseline[ex]) for ex in ids]
        acc = metrics.split_metric('accuracy', truth, guess) - metrics.split_metric('accuracy', truth, before)
        f1 = metrics.split_metric('macro_f1', truth, guess) - metrics.split_metric('macro_f1', truth, before)
        if acc > 0 and f1 < 0:
            flags.append(
                f'accuracy rises {acc * 100:.1f} points but macro-F1 falls {-f1 * 100:.1f} points against the baseline'
            )
    return flags


@dataclass(frozen=True)
class Verdict:
    """One version against another on a split by one metric: values, the paired difference and its test."""

    split: str
    metric: str
    n: int
    name_a: str
    name_b: str
    value_a: float
    value_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float

    def sentence(self, alpha: float = 0.05) -> str:
        """Say in words which is better on the split, naming both versions."""
        detail = (
            f'{self.metric} {self.value_b:.3f} vs {self.value_a:.3f} ({self.diff * 100:+.1f} points, 95% CI '
            f'{self.ci_low * 100:+.1f} to {self.ci_high * 100:+.1f}, {_p(self.p_value)}, n = {self.n})'
        )
        if self.p_value < alpha and self.diff > 0:
            return f'{self.name_b} is better than {self.name_a} on {self.split}: {detail}'
        if self.p_value < alpha and self.diff < 0:
            return f'{self.name_b} is worse than {self.name_a} on {self.split}: {detail}'
        return f'no detectable difference between {self.name_b} and {self.name_a} on {self.split}: {detail}'


def _p(p: float) -> str:
    return 'p < 0.001' if p < 0.001 else f'p = {p:.3f}' if p < 0.01 else f'p = {p:.2f}'


def verdict(
    metric: Metric,
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    *,
    split: str,
    names: tuple[str, str],
    expected: Mapping[str, Any] | None = None,
    resamples: int = 10_000,
) -> Verdict:
    """Compare predictions `b` against `a` (by example id) on the examples both cover, by `metric`, paired
    (`resamples` permutations and bootstrap draws: fewer for a quick check, as racing does)."""
    truth_by_id = expected if expected is not None else metric.expected
    ids = [ex for ex in truth_by_id if ex in a and ex in b]
    if not ids:
        raise OptimizeError(f'{names[0]} and {names[1]} share no scored examples on {split}; evaluate both first')
    if len(ids) < 2:  # one example is no evidence: no test, p = 1 (a budget that ended very early)
        value_a = metric.score({ex: a[ex] for ex in ids}) if truth_by_id is metric.expected else 0.0
        value_b = metric.score({ex: b[ex] for ex in ids}) if truth_by_id is metric.expected else 0.0
        diff = value_b - value_a
        return Verdict(split, metric.name, len(ids), *names, value_a, value_b, diff, diff, diff, 1.0)
    if metric.split_level:
        result = stats.compare_label_metric(
            metric.name,
            [str(truth_by_id[ex]) for ex in ids],
            [_label(a[ex]) for ex in ids],
            [_label(b[ex]) for ex in ids],
            resamples=resamples,
        )
        values = (result.value_a, result.value_b, result.diff, result.ci_low, result.ci_high, result.p_value)
        return Verdict(split, metric.name, result.n, *names, *values)
    score_a = [metric.per_example(a[ex], truth_by_id[ex]) for ex in ids]
    score_b = [metric.per_example(b[ex], truth_by_id[ex]) for ex in ids]
    cmp = stats.compare_scores(
        score_a, score_b, name_a=names[0], name_b=names[1], split=split, binary=False, resamples=resamples
    )
    values = (cmp.mean_a, cmp.mean_b, cmp.diff, cmp.ci_low, cmp.ci_high, cmp.p_value)
    return Verdict(split, metric.name, cmp.n, *names, *values)


@dataclass(frozen=True)
class Decision:
    """Which candidate (if any) replaces the baseline, the dev verdict it rests on, and why, in words."""

    accepted: bool
    trial: int | None  # the best eligible candidate's trial number, accepted or not
    dev: Verdict | None
    reason: str
    flags: dict[int, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Scored:
    """A candidate as the decision sees it: its trial number, name, predictions on dev and its metric value."""

    trial: int
    name: str
    predictions: Mapping[str, Any]
    value: float
    picked: bool = False  # the optimizer's own pick, preferred among equals
    ok: bool = True  # no model error in its dev evaluation
    depth: int = 0  # how far a raced candidate went (its last completed rung): the deeper are compared first


def decide(
    metric: Metric,
    baseline: Scored,
    candidates: Sequence[Scored],
    *,
    task: str,
    alpha: float = 0.1,
    margin: float | None = None,
    allow_degenerate: bool = False,
    dev: str = 'dev',
) -> Decision:
    """Pick the best eligible candidate and accept it only if it beats the baseline on dev by the paired test at
    `alpha` (or by at least `margin`, if given)."""
    flags = {c.trial: candidate_flags(c.predictions, baseline.predictions, metric.expected) for c in candidates}
    flags = {t: f for t, f in flags.items() if f} if task == 'choice' else {}
    eligible = [c for c in candidates if c.ok and (allow_degenerate or c.trial not in flags)]
    refused = ''
    if flags and not allow_degenerate:
        shown = '; '.join(f'trial {t}: {", ".join(f)}' for t, f in sorted(flags.items())[:3])
        refused = f' {len(flags)} candidate(s) refused as degenerate ({shown}).'
    if not eligible:
        return Decision(
            False, None, None, f'kept {baseline.name}: no eligible candidate was scored on {dev}.{refused}', flags
        )
    best = max(eligible, key=lambda c: (c.depth, c.value, c.picked, -c.trial))
    result = verdict(metric, baseline.predictions, best.predictions, split=dev, names=(baseline.name, best.name))
    rule = f'at least {margin * 100:+.1f} points' if margin is not None else f'p < {alpha:g}'
    better = result.diff > 0 and (result.diff >= margin if margin is not None else result.p_value < alpha)
    detail = (
        f'{metric.name} {result.value_b:.3f} vs {result.value_a:.3f} on {dev} ({result.diff * 100:+.1f} points, 95% CI '
        f'{result.ci_low * 100:+.1f} to {result.ci_high * 100:+.1f}, {_p(result.p_value)}, n = {result.n}; '
        f'{len(candidates)} candidate(s) tried)'
    )
    called = best.name if best.name == f'trial {best.trial}' else f'{best.name} (trial {best.trial})'
    if better:
        reason = f'{called} replaces {baseline.name}: {detail}, better by {rule}.{refused}'
    else:
        reason = (
            f'kept {baseline.name}: the best candidate, {called}, scored {detail}, '
            f'which is not better by {rule}.{refused}'
        )
    return Decision(better, best.trial, result, reason, flags)
