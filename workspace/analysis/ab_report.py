"""A/B experiments, the report: logged outcomes of the units served each arm, compared with the baseline arm.

Serving code assigns units to versions by the experiment's traffic (`workspace.serving.traffic`) and logs their
outcomes to `prompt_workspace/ab_outcomes`; `ab_report` compares the arms with each unit counted once, and checks
that the units arrived in the planned proportions (a sample ratio mismatch means the assignment or the logging is
biased).

*Traffic* is the experiment's weights over versions (`{'v1': 50, 'v3': 50}`); the glossary keeps *split* for
train/dev/test.
"""

from __future__ import annotations

import html
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import pandas as pd

from workspace.core.stats import check_confidence, proportion_interval
from workspace.display.formats import p_phrase, points
from workspace.errors import ComparisonError
from workspace.storage import tables

__all__ = ['ABReport', 'ab_report', 'traffic_weights', 'check_name', 'PerUnit']

_EXAMPLE_TRAFFIC = "{'v1': 50, 'v3': 50}"


def check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip() or '\0' in value:
        raise ComparisonError(f'{what} {value!r} is not a usable name; pass a non-empty string such as {"default"!r}')
    return value


def traffic_weights(traffic: object) -> dict[str, float]:
    """Return the traffic as {arm key: weight} after checking it names at least one arm, each with a positive weight."""
    if not isinstance(traffic, Mapping):
        raise ComparisonError(f'traffic must map versions to weights, e.g. {_EXAMPLE_TRAFFIC}; got {traffic!r}')
    if not traffic:
        raise ComparisonError(f'traffic is empty; name at least one version and its weight, e.g. {_EXAMPLE_TRAFFIC}')
    weights: dict[str, float] = {}
    for key, weight in traffic.items():
        arm = str(key).strip()
        if not arm:
            raise ComparisonError("traffic has an empty key; name a version such as 'v3' or '@production'")
        if arm in weights:
            raise ComparisonError(f'traffic names {arm!r} twice; give each version one weight')
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight) or weight <= 0:
            raise ComparisonError(
                f'weight of {key!r} is {weight!r}; weights must be positive numbers (percentages or any '
                f'proportions), e.g. {_EXAMPLE_TRAFFIC}'
            )
        weights[arm] = float(weight)
    return weights


_Method = Literal['fisher', 'welch']
PerUnit = Literal['mean', 'sum', 'max']
_PER_UNIT_WORDS = {'mean': 'mean', 'sum': 'total', 'max': 'maximum'}
_POWER = 0.8
_SRM_ALPHA = 0.001


@dataclass(frozen=True)
class ABReport:
    """Per-arm outcomes of one experiment, each arm compared with the baseline, and verdicts in plain words.

    `arms` has one row per arm: version, units, events, mean (of per-unit outcomes) with its CI, share of units and
    planned share. `comparisons` has one row per arm against the baseline: diff (arm - baseline) with its CI,
    relative lift, p-value, significance and the smallest difference the experiment could detect (80% power).
    `verdicts` opens with warnings, then one sentence per comparison, then notes.
    """

    prompt: str
    experiment: str
    baseline: str
    test: _Method
    per_unit: PerUnit
    confidence: float
    arms: pd.DataFrame
    comparisons: pd.DataFrame
    verdicts: list[str]
    srm_p_value: float | None

    def _header(self) -> list[tuple[str, str]]:
        srm = 'not checked (pass traffic= to check)' if self.srm_p_value is None else p_phrase(self.srm_p_value)
        return [
            ('prompt', self.prompt),
            ('experiment', self.experiment),
            ('baseline', self.baseline),
            ('test', f'{self._test_name()}, {self.confidence:.0%} confidence'),
            ('sample ratio', srm),
        ]

    def _test_name(self) -> str:
        word = _PER_UNIT_WORDS[self.per_unit]
        if self.test == 'fisher':
            return f"Fisher's exact test on each unit's {word} outcome (all 0 or 1)"
        return f"Welch's t-test on each unit's {word} outcome"

    def __str__(self) -> str:
        width = max(len(k) for k, _ in self._header())
        lines = [f'{k:<{width}}  {v}' for k, v in self._header()]
        lines += ['', 'arms:', self.arms.round(4).to_string(index=False)]
        if len(self.comparisons):
            lines += ['', f'against {self.baseline}:', self.comparisons.round(4).to_string(index=False)]
        lines += ['', *self.verdicts]
        return '\n'.join(lines)

    def _repr_html_(self) -> str:
        head = ''.join(
            f'<tr><th style="text-align:left">{html.escape(k)}</th><td>{html.escape(v)}</td></tr>'
            for k, v in self._header()
        )
        parts = [f'<table class="pw-ab">{head}</table>', '<h4>Arms</h4>', self.arms.round(4).to_html(index=False)]
        if len(self.comparisons):
            parts += [f'<h4>Against {html.escape(self.baseline)}</h4>', self.comparisons.round(4).to_html(index=False)]
        parts.append('<ul>' + ''.join(f'<li>{html.escape(v)}</li>' for v in self.verdicts) + '</ul>')
        return '\n'.join(parts)


def _count(n: int, noun: str) -> str:
    return f'{n:,} {noun}' + ('' if n == 1 else 's')


def _natural(arm: str) -> tuple[Any, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r'(\d+)', arm))


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Return the Wilson score interval of a proportion (NaN, NaN for no units)."""
    return proportion_interval(successes, n, confidence=confidence) if n else (math.nan, math.nan)


# scipy is imported where it is used: serving code imports the workspace to assign, and never reports.
def _t_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    import scipy.stats

    if len(values) < 2:
        return math.nan, math.nan
    mean, se = float(values.mean()), float(values.std(ddof=1)) / math.sqrt(len(values))
    t = float(scipy.stats.t.ppf(1 - check_confidence(confidence) / 2, len(values) - 1))
    return mean - t * se, mean + t * se


@dataclass(frozen=True)
class _Result:
    diff: float
    low: float
    high: float
    p: float
    mde: float


def _fisher(base: np.ndarray, arm: np.ndarray, confidence: float) -> _Result:
    """Fisher's exact p-value, and Newcombe's hybrid score interval for the difference, built from Wilson's."""
    import scipy.stats

    k0, n0, k1, n1 = int(base.sum()), len(base), int(arm.sum()), len(arm)
    p = float(scipy.stats.fisher_exact([[k1, n1 - k1], [k0, n0 - k0]]).pvalue)
    p0, p1 = k0 / n0, k1 / n1
    (l0, u0), (l1, u1) = wilson_interval(k0, n0, confidence=confidence), wilson_interval(k1, n1, confidence=confidence)
    diff = p1 - p0
    low = diff - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = diff + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    se = math.sqrt(p0 * (1 - p0) / n0 + p1 * (1 - p1) / n1)
    return _Result(diff, low, high, min(1.0, p), _mde(se, confidence))


def _welch(base: np.ndarray, arm: np.ndarray, confidence: float) -> _Result:
    diff = float(arm.mean() - base.mean())
    se = math.sqrt(arm.var(ddof=1) / len(arm) + base.var(ddof=1) / len(base))
    if se == 0:  # both arms constant: the difference is exact
        return _Result(diff, diff, diff, 1.0 if diff == 0 else 0.0, math.nan)
    import scipy.stats

    result = scipy.stats.ttest_ind(arm, base, equal_var=False)
    interval = result.confidence_interval(confidence_level=confidence)
    return _Result(diff, float(interval.low), float(interval.high), float(result.pvalue), _mde(se, confidence))


def _mde(se: float, confidence: float) -> float:
    """Return the difference a two-sided test at this confidence detects with 80% power, given its standard error."""
    if se == 0:
        return math.nan
    return (NormalDist().inv_cdf(1 - check_confidence(confidence) / 2) + NormalDist().inv_cdf(_POWER)) * se


def _sentence(
    arm: str, base: str, r: _Result, n: int, test: _Method, confidence: float, significant: bool, higher_is_better: bool
) -> str:
    """Say in one sentence whether the arm beat the baseline, or that no difference showed and what could."""
    half = (r.high - r.low) / 2
    # Continuous outcomes: two significant digits of the CI half-width, so the numbers carry no false precision.
    decimals = min(6, max(0, 1 - math.floor(math.log10(half)))) if half > 0 else 3

    def amount(value: float) -> str:
        return points(value) if test == 'fisher' else f'{value + 0.0:+.{decimals}f}'

    unit = ' points' if test == 'fisher' else ''
    ci = f'{confidence * 100:.3g}% CI {amount(r.low)} to {amount(r.high)}, {p_phrase(r.p)}, n = {n:,} units'
    if significant:
        better = (r.diff > 0) == higher_is_better
        return f'{arm} is {"better" if better else "worse"} than {base} ({amount(r.diff)}{unit}, {ci})'
    detect = ''
    if not math.isnan(r.mde):
        detect = f'; at this size it could detect about {amount(r.mde).lstrip("+")}{unit} (80% power)'
    return f'no detectable difference between {arm} and {base} ({amount(r.diff)}{unit}, {ci}){detect}'


def _sample_ratio(
    planned: list[str], observed: list[int], shares: dict[str, float], warnings: list[str]
) -> float | None:
    """Return the chi-square goodness-of-fit p-value of units per planned arm, adding a warning below 0.001."""
    import scipy.stats

    if len(planned) < 2 or sum(observed) == 0:
        return None
    expected = sum(observed) * np.array([shares[a] for a in planned])
    p = float(scipy.stats.chisquare(np.array(observed, dtype=float), expected).pvalue)
    if p < _SRM_ALPHA:
        counts = ' / '.join(f'{o:,}' for o in observed)
        plan = ' / '.join(f'{shares[a] * 100:.3g}%' for a in planned)
        warnings.append(
            f'warning: sample ratio mismatch ({p_phrase(p)}): units per arm {counts} against a planned {plan} '
            f'({", ".join(planned)}); the assignment or the outcome logging is biased, so do not trust the '
            'comparisons until the cause is found'
        )
    return p


def _outcomes(prompt: str, experiment: str) -> pd.DataFrame:
    t = tables.ab_outcomes()
    frame = (
        t.where((t.prompt == prompt) & (t.experiment == experiment))
        .select(t.arm, t.unit_id, t.version_id, t.outcome)
        .collect()
        .to_pandas()
    )
    if len(frame) == 0:
        found = t.where(t.prompt == prompt).select(t.experiment).collect()
        known = sorted({r['experiment'] for r in found})
        raise ComparisonError(
            f'no outcomes logged for {prompt!r} in experiment {experiment!r}; experiments of {prompt!r} with '
            f'outcomes: {", ".join(map(repr, known)) or "none yet"}. Log them with ws.log_outcome or ws.log_outcomes'
        )
    return frame


def ab_report(
    prompt: str,
    *,
    experiment: str = 'default',
    traffic: Mapping[str, float] | None = None,
    baseline: str | None = None,
    confidence: float = 0.95,
    higher_is_better: bool = True,
    per_unit: PerUnit = 'mean',
) -> ABReport:
    """Compare the arms of an experiment from its logged outcomes, each unit counted once.

    Units, not events, are randomised, so a unit with several events counts once, with its mean outcome
    (`per_unit='sum'` for totals such as revenue, `'max'` for "ever converted"). When every unit's outcome is 0 or 1
    the arms get Wilson intervals and each arm is compared with the baseline by Fisher's exact test (difference CI:
    Newcombe's hybrid score interval); otherwise t-intervals and Welch's t-test on per-unit outcomes. Pass the
    planned `traffic` to order the arms, list arms with no outcomes yet, and check the sample ratio (chi-square
    goodness of fit of units per arm; p < 0.001 adds a warning). The baseline is `baseline`, else the first arm
    with outcomes, in the traffic's order and then by name. `higher_is_better=False` for outcomes such as latency.

    >>> print(ab_report('ticket_router', traffic={'v1': 50, 'v3': 50}))
    """
    alpha = check_confidence(confidence)
    if per_unit not in _PER_UNIT_WORDS:
        raise ComparisonError(f"per_unit {per_unit!r} is not one of 'mean', 'sum', 'max'")
    weights = traffic_weights(traffic) if traffic is not None else None
    frame = _outcomes(check_name('prompt', prompt), check_name('experiment', experiment))
    units = (
        frame.groupby(['arm', 'unit_id'], sort=False)
        .agg(outcome=('outcome', per_unit), events=('outcome', 'size'))
        .reset_index()
    )
    values = {arm: group['outcome'].to_numpy(dtype=float) for arm, group in units.groupby('arm', sort=False)}
    planned = list(weights or {})
    arms = planned + sorted((a for a in values if a not in planned), key=_natural)
    test: _Method = 'fisher' if np.isin(units['outcome'], (0.0, 1.0)).all() else 'welch'
    baseline = _pick_baseline(baseline, arms, values)
    shares = {a: w / sum(weights.values()) for a, w in weights.items()} if weights else {}
    versions = frame.groupby('arm')['version_id'].agg(lambda ids: ', '.join(sorted(set(ids))))

    arm_rows = _arm_rows(arms, values, versions, frame.groupby('arm').size(), shares, test, confidence)
    warnings: list[str] = []
    srm_p_value = _sample_ratio(planned, [len(_units_of(values, a)) for a in planned], shares, warnings)
    warnings += _assignment_warnings(arms, weights, versions, units)
    comparison_rows, sentences = _compare_arms(arms, baseline, values, test, confidence, alpha, higher_is_better)
    notes = _notes(frame, units, test, per_unit, baseline, len(comparison_rows), alpha)
    columns = ['arm', 'baseline', 'units', 'diff', 'ci_low', 'ci_high', 'lift', 'p_value', 'significant', 'mde']
    return ABReport(
        prompt=prompt,
        experiment=experiment,
        baseline=baseline,
        test=test,
        per_unit=per_unit,
        confidence=confidence,
        arms=pd.DataFrame(arm_rows, columns=list(arm_rows[0])),
        comparisons=pd.DataFrame(comparison_rows, columns=columns),
        verdicts=warnings + sentences + notes,
        srm_p_value=srm_p_value,
    )


def _units_of(values: dict[str, np.ndarray], arm: str) -> np.ndarray:
    """Return the per-unit outcomes of an arm, none for a planned arm with no outcomes yet."""
    return values.get(arm, np.array([], dtype=float))


def _pick_baseline(baseline: str | None, arms: list[str], values: dict[str, np.ndarray]) -> str:
    """Return the baseline asked for, else the first arm with outcomes, after checking it has outcomes."""
    if baseline is None:
        baseline = next((a for a in arms if len(_units_of(values, a))), arms[0])
    if baseline not in arms:
        raise ComparisonError(f'baseline {baseline!r} is not an arm of this experiment; arms: {", ".join(arms)}')
    if not len(_units_of(values, baseline)):
        raise ComparisonError(
            f'baseline arm {baseline!r} has no outcomes yet; pass baseline= one of {", ".join(values)}'
        )
    return baseline


def _arm_rows(
    arms: list[str],
    values: dict[str, np.ndarray],
    versions: pd.Series,
    events: pd.Series,
    shares: dict[str, float],
    test: _Method,
    confidence: float,
) -> list[dict[str, Any]]:
    """Return one row per arm: its versions, units, events, mean outcome with its CI, and actual and planned share."""
    total_units = sum(len(v) for v in values.values())
    rows = []
    for arm in arms:
        x = _units_of(values, arm)
        if test == 'fisher':
            low, high = wilson_interval(int(x.sum()), len(x), confidence=confidence)
        else:
            low, high = _t_interval(x, confidence)
        rows.append(
            {
                'arm': arm,
                'version': versions.get(arm, ''),
                'units': len(x),
                'events': int(events.get(arm, 0)),
                'mean': float(x.mean()) if len(x) else math.nan,
                'ci_low': low,
                'ci_high': high,
                'share': len(x) / total_units,
                'planned': shares.get(arm, math.nan),
            }
        )
    return rows


def _assignment_warnings(
    arms: list[str], weights: dict[str, float] | None, versions: pd.Series, units: pd.DataFrame
) -> list[str]:
    """Warn of arms outside the traffic, arms that served several versions, and units that reached several arms."""
    warnings = []
    for arm in arms:
        if weights and arm not in weights:
            warnings.append(
                f'warning: arm {arm!r} has outcomes but is not in the traffic; it is compared but not planned'
            )
        if ',' in versions.get(arm, ''):
            warnings.append(f'warning: arm {arm!r} served several versions ({versions[arm]}); a label moved mid-test?')
    crossed = int((units.groupby('unit_id')['arm'].nunique() > 1).sum())
    if crossed:
        warnings.append(
            f'warning: {_count(crossed, "unit")} in more than one arm; each counts in every arm it reached, '
            'which blurs the difference (was the traffic or the experiment name changed mid-test?)'
        )
    return warnings


def _compare_arms(
    arms: list[str],
    baseline: str,
    values: dict[str, np.ndarray],
    test: _Method,
    confidence: float,
    alpha: float,
    higher_is_better: bool,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Compare each arm with the baseline: return the comparison rows and one sentence per arm."""
    rows = []
    sentences = []
    base = values[baseline]
    for arm in arms:
        x = _units_of(values, arm)
        if arm == baseline:
            continue
        if not len(x) or (test == 'welch' and (len(x) < 2 or len(base) < 2)):
            sentences.append(f'cannot compare {arm} with {baseline} yet: {len(x)} and {len(base)} units with outcomes')
            continue
        r = _fisher(base, x, confidence) if test == 'fisher' else _welch(base, x, confidence)
        significant = r.p < alpha and (r.low > 0 or r.high < 0)
        rows.append(
            {
                'arm': arm,
                'baseline': baseline,
                'units': len(x) + len(base),
                'diff': r.diff,
                'ci_low': r.low,
                'ci_high': r.high,
                'lift': r.diff / base.mean() if base.mean() != 0 else math.nan,
                'p_value': r.p,
                'significant': significant,
                'mde': r.mde,
            }
        )
        sentences.append(
            _sentence(arm, baseline, r, len(x) + len(base), test, confidence, significant, higher_is_better)
        )
    if len(arms) == 1:
        sentences.append(f'only arm {arms[0]!r} has outcomes; nothing to compare yet')
    return rows, sentences


def _notes(
    frame: pd.DataFrame,
    units: pd.DataFrame,
    test: _Method,
    per_unit: PerUnit,
    baseline: str,
    comparisons: int,
    alpha: float,
) -> list[str]:
    """Note what a reader could misread: units with several events, 0/1 events tested by Welch, many comparisons."""
    notes = []
    repeated = int((units['events'] > 1).sum())
    if repeated:
        notes.append(
            f'note: {repeated:,} of {_count(len(units), "unit")} had more than one event; each unit counts once, '
            f'with its {_PER_UNIT_WORDS[per_unit]} outcome, since units (not events) were randomised'
        )
    if test == 'welch' and frame['outcome'].isin((0.0, 1.0)).all():
        hint = '' if per_unit == 'max' else "; per_unit='max' compares units that ever had a 1"
        notes.append(
            f"note: outcomes are 0/1 but not every unit's {_PER_UNIT_WORDS[per_unit]} outcome is, so the test is "
            f"Welch's t-test on per-unit values{hint}"
        )
    if comparisons > 1:
        notes.append(
            f'note: {comparisons} arms are each compared with {baseline}; with several comparisons one may '
            f'look significant by chance (Bonferroni would ask p < {alpha / comparisons:.3g})'
        )
    return notes
