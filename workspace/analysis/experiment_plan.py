"""Planning and deciding an A/B experiment: a minimum sample size before it starts, a decision when it may stop.

A plan (`plan_experiment`) fixes, before any outcome is seen, the baseline arm, the direction that is better, the
significance level and how the experiment is decided:

- ``fixed`` (a fixed horizon): nothing is decided until every arm has its planned units (`min_units`); then each
  arm is compared with the baseline by the test of `ab_report` (Fisher's exact test on 0/1 outcomes, else
  Welch's t-test). Looking earlier and stopping on a good-looking p-value inflates false positives, so the
  decision before the horizon is always "keep collecting".
- ``sequential``: an always-valid p-value (the mixture sequential probability ratio test, mSPRT; Johari, Koomen,
  Pekelis and Walsh 2017, "Peeking at A/B tests", the test Optimizely's stats engine uses) that may be looked at
  after every unit: the experiment stops as soon as it falls below alpha, and at the planned units with "no
  detectable difference" otherwise. The mixture's scale is the planned effect (`mde`).

With more than two arms each is compared with the baseline at alpha / (arms - 1) (Bonferroni). The minimum sample
size is the textbook normal approximation (below); scipy gives the quantiles but has no power solver, and
statsmodels, which has one, is not a dependency for two lines of arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal, TypedDict

import numpy as np
import pandas as pd

from workspace.analysis.ab_report import ABReport, ab_report
from workspace.core.stats import check_confidence
from workspace.display.formats import p_phrase
from workspace.errors import ComparisonError
from workspace.storage import tables

__all__ = ['Plan', 'ExperimentDecision', 'min_sample_size', 'plan_experiment', 'decide', 'msprt_p_value']

Decision = Literal['fixed', 'sequential']


class Plan(TypedDict):
    """How an experiment is decided, fixed before it starts (stored with the experiment)."""

    baseline: str
    min_units: int  # per arm: the fixed horizon, or the most a sequential experiment runs
    mde: float | None  # the absolute difference worth detecting
    alpha: float
    power: float
    decision: Decision
    higher_is_better: bool


def min_sample_size(
    mde: float, *, baseline_rate: float | None = None, sd: float | None = None, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Return the units per arm a two-sided test at `alpha` needs to detect an absolute difference `mde` with
    `power`: for a 0/1 outcome with the baseline's rate (n = (z_a sqrt(2 p q) + z_b sqrt(p0 q0 + p1 q1))^2 / mde^2,
    p the mean of p0 and p1), or for a numeric outcome with standard deviation `sd` (n = 2 (z_a + z_b)^2 sd^2 /
    mde^2), z_a = z(1 - alpha / 2), z_b = z(power).

    >>> min_sample_size(0.05, baseline_rate=0.2)  # 20% to 25% conversion, alpha 0.05, power 0.8
    1094
    """
    if not (isinstance(mde, (int, float)) and mde > 0):
        raise ComparisonError(f'mde={mde!r} is the absolute difference to detect; give a positive number such as 0.05')
    if not 0 < power < 1:
        raise ComparisonError(f'power={power!r} must be between 0 and 1, e.g. 0.8')
    z_a, z_b = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    if baseline_rate is not None:
        p0, p1 = float(baseline_rate), float(baseline_rate) + mde
        if not (0 < p0 < 1 and 0 < p1 < 1):
            raise ComparisonError(
                f'baseline_rate={baseline_rate!r} and mde={mde!r} must keep both rates strictly between 0 and 1'
            )
        p = (p0 + p1) / 2
        n = (z_a * math.sqrt(2 * p * (1 - p)) + z_b * math.sqrt(p0 * (1 - p0) + p1 * (1 - p1))) ** 2 / mde**2
    elif sd is not None and sd > 0:
        n = 2 * (z_a + z_b) ** 2 * float(sd) ** 2 / mde**2
    else:
        raise ComparisonError(
            "the minimum sample size needs the outcome's spread: baseline_rate= for a 0/1 outcome (e.g. 0.2) or sd= "
            'for a numeric one; or give min_units= directly'
        )
    return int(math.ceil(n))


def plan_experiment(
    traffic: Mapping[str, float],
    *,
    baseline: str | None = None,
    min_units: int | None = None,
    mde: float | None = None,
    baseline_rate: float | None = None,
    sd: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    decision: Decision = 'fixed',
    higher_is_better: bool = True,
) -> Plan:
    """Return an experiment's plan: its baseline arm (the first of the traffic unless named), the units each arm
    needs (`min_units`, or `min_sample_size(mde, ...)`), and how it is decided (`'fixed'` or `'sequential'`).

    >>> plan_experiment({'@production': 50, 'v4': 50}, mde=0.05, baseline_rate=0.2, decision='sequential')['min_units']
    1094
    """
    arms = [str(a) for a in traffic]
    check_confidence(1 - alpha)
    if decision not in ('fixed', 'sequential'):
        raise ComparisonError(f"decision={decision!r} is not known; use 'fixed' (a fixed horizon) or 'sequential'")
    base = baseline if baseline is not None else arms[0]
    if base not in arms:
        raise ComparisonError(f'baseline {base!r} is not an arm of the traffic; arms: {", ".join(arms)}')
    if decision == 'sequential' and mde is None:
        raise ComparisonError(
            'a sequential decision weighs the evidence against the effect you care about: give mde= (e.g. 0.05)'
        )
    if min_units is None:
        if mde is None:
            raise ComparisonError(
                'plan the sample size before starting: give min_units= (units per arm) or mde= with baseline_rate= '
                '(0/1 outcomes) or sd= (numeric outcomes)'
            )
        min_units = min_sample_size(mde, baseline_rate=baseline_rate, sd=sd, alpha=alpha, power=power)
    if isinstance(min_units, bool) or not isinstance(min_units, int) or min_units < 2:
        raise ComparisonError(f'min_units={min_units!r} must be a whole number of units per arm, at least 2')
    return Plan(
        baseline=base,
        min_units=int(min_units),
        mde=None if mde is None else float(mde),
        alpha=float(alpha),
        power=float(power),
        decision=decision,
        higher_is_better=bool(higher_is_better),
    )


@dataclass(frozen=True)
class ExperimentDecision:
    """Where an experiment stands under its plan: still collecting, or decided (the winner may be the baseline)."""

    prompt: str
    experiment: str
    plan: Plan
    status: Literal['collecting', 'decided']
    winner: str | None  # the winning arm when decided
    reason: str
    units: dict[str, int] = field(default_factory=dict)
    p_values: dict[str, float] = field(default_factory=dict)  # per arm against the baseline
    report: ABReport | None = None

    @property
    def decided(self) -> bool:
        return self.status == 'decided'

    def __str__(self) -> str:
        units = ', '.join(f'{arm} {n:,}' for arm, n in self.units.items())
        return f'{self.prompt}/{self.experiment}: {self.reason} (units: {units or "none yet"}; planned {self.plan["min_units"]:,} per arm)'

    def _repr_html_(self) -> str:
        import html

        return f'<p class="pw-decision">{html.escape(str(self))}</p>'


#: Units each arm needs before the sequential test is read: the variance it plugs in is too rough before.
MIN_SEQUENTIAL_UNITS = 10


def msprt_p_value(base: np.ndarray, arm: np.ndarray, tau: float) -> float:
    """Return the always-valid p-value of the difference of means after the units seen so far, in arrival order.

    At each arrival with at least `MIN_SEQUENTIAL_UNITS` units per arm, the mixture likelihood ratio of a normal
    mixture N(0, tau^2) over the difference is L = sqrt(V / (V + tau^2)) exp(tau^2 d^2 / (2 V (V + tau^2))), with
    d the difference of means and V its variance (the pooled variance of the units so far times 1/n0 + 1/n1); the
    p-value is the smallest 1 / L seen so far, capped at 1.

    `base` and `arm` hold one row per unit: its arrival time, then its outcome.
    """
    events = np.concatenate([np.column_stack([base, np.zeros(len(base))]), np.column_stack([arm, np.ones(len(arm))])])
    events = events[np.argsort(events[:, 0], kind='stable')]
    values, which = events[:, 1], events[:, 2].astype(bool)
    n1 = np.cumsum(which).astype(float)
    n0 = np.cumsum(~which).astype(float)
    s1, s0 = np.cumsum(np.where(which, values, 0.0)), np.cumsum(np.where(which, 0.0, values))
    total, squares = np.cumsum(values), np.cumsum(values * values)
    ok = (n0 >= MIN_SEQUENTIAL_UNITS) & (n1 >= MIN_SEQUENTIAL_UNITS)
    if not ok.any():
        return 1.0
    n0, n1, s0, s1, total, squares = (a[ok] for a in (n0, n1, s0, s1, total, squares))
    n = n0 + n1
    pooled = np.maximum(squares / n - (total / n) ** 2, 0) * n / (n - 1)
    var = np.maximum(pooled * (1 / n0 + 1 / n1), 1e-12)  # all units equal so far: nothing to weigh yet
    t2 = tau**2
    log_l = 0.5 * np.log(var / (var + t2)) + t2 * (s1 / n1 - s0 / n0) ** 2 / (2 * var * (var + t2))
    return float(min(1.0, math.exp(-float(log_l.max()))))


def _units(prompt: str, experiment: str) -> pd.DataFrame:
    """Return one row per (arm, unit): its mean outcome and when its first outcome came."""
    t = tables.ab_outcomes()
    frame = (
        t.where((t.prompt == prompt) & (t.experiment == experiment))
        .select(t.arm, t.unit_id, t.outcome, t.logged_at)
        .collect()
        .to_pandas()
    )
    if frame.empty:
        return pd.DataFrame(columns=['arm', 'unit_id', 'outcome', 'first'])
    frame['first'] = pd.to_datetime(frame['logged_at'], utc=True).astype('int64') / 1e9
    return frame.groupby(['arm', 'unit_id']).agg(outcome=('outcome', 'mean'), first=('first', 'min')).reset_index()


def decide(prompt: str, experiment: str, plan: Plan, traffic: Mapping[str, float]) -> ExperimentDecision:
    """Return where an experiment stands under its plan (see the module docstring), from its logged outcomes."""
    units = _units(prompt, experiment)
    arms = [str(a) for a in traffic]
    counts = {arm: int((units['arm'] == arm).sum()) for arm in arms}
    base, others = plan['baseline'], [a for a in arms if a != plan['baseline']]
    alpha = plan['alpha'] / max(len(others), 1)
    horizon = all(n >= plan['min_units'] for n in counts.values())
    decision: dict[str, Any] = {'prompt': prompt, 'experiment': experiment, 'plan': plan, 'units': counts}
    if plan['decision'] == 'sequential':
        return _sequential(units, base, others, alpha, horizon, decision)
    if not horizon:
        short = ', '.join(f'{a} {counts[a]:,}/{plan["min_units"]:,}' for a in arms if counts[a] < plan['min_units'])
        return ExperimentDecision(
            **decision,
            status='collecting',
            winner=None,
            reason=f'keep collecting: a fixed-horizon test decides when every arm has its planned units ({short})',
        )
    report = ab_report(
        prompt,
        experiment=experiment,
        traffic=traffic,
        baseline=base,
        higher_is_better=plan['higher_is_better'],
        confidence=1 - alpha,
    )
    p_values = dict(zip(report.comparisons['arm'], report.comparisons['p_value']))
    better = [r for r in report.comparisons.itertuples() if r.significant and (r.diff > 0) == plan['higher_is_better']]
    return _verdict(decision, better, base, p_values, report)


def _verdict(
    decision: dict[str, Any], better: list[Any], base: str, p_values: dict[str, float], report: ABReport | None
) -> ExperimentDecision:
    if better:
        best = max(better, key=lambda r: r.diff if decision['plan']['higher_is_better'] else -r.diff)
        reason = f'{best.arm} wins: better than {base} by {best.diff:+.4g} ({p_phrase(best.p_value)})'
        return ExperimentDecision(
            **decision, status='decided', winner=best.arm, reason=reason, p_values=p_values, report=report
        )
    reason = f'{base} stays: no arm is detectably better at the planned size ({", ".join(f"{a} {p_phrase(p)}" for a, p in p_values.items()) or "no comparison"})'
    return ExperimentDecision(
        **decision, status='decided', winner=base, reason=reason, p_values=p_values, report=report
    )


@dataclass(frozen=True)
class _Row:
    arm: str
    diff: float
    p_value: float


def _sequential(
    units: pd.DataFrame, base: str, others: list[str], alpha: float, horizon: bool, decision: dict[str, Any]
) -> ExperimentDecision:
    plan = decision['plan']
    pairs = {arm: units.loc[units['arm'] == arm, ['first', 'outcome']].to_numpy(dtype=float) for arm in [base, *others]}
    p_values: dict[str, float] = {}
    better: list[_Row] = []
    worse: list[_Row] = []
    for arm in others:
        if min(len(pairs[arm]), len(pairs[base])) < MIN_SEQUENTIAL_UNITS:
            p_values[arm] = 1.0
            continue
        p = msprt_p_value(pairs[base], pairs[arm], tau=float(plan['mde']))
        p_values[arm] = p
        diff = float(pairs[arm][:, 1].mean() - pairs[base][:, 1].mean())
        if p < alpha:
            (better if (diff > 0) == plan['higher_is_better'] else worse).append(_Row(arm, diff, p))
    if better or horizon:
        return _verdict(decision, better, base, p_values, None)
    shown = ', '.join(f'{a} always-valid {p_phrase(p)}' for a, p in p_values.items())
    reason = f'keep collecting: no arm is decided yet ({shown}); the sequential test may be read after every unit'
    if worse and len(worse) == len(others):
        reason = f'{base} stays: every other arm is detectably worse ({shown})'
        return ExperimentDecision(**decision, status='decided', winner=base, reason=reason, p_values=p_values)
    return ExperimentDecision(**decision, status='collecting', winner=None, reason=reason, p_values=p_values)
