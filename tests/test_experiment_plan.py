"""Planning and deciding A/B experiments: the minimum sample size against an independent approximation, and the
sequential test's promise (peeking after every unit keeps the false-positive rate under alpha) checked by
simulation."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from workspace.analysis.experiment_plan import min_sample_size, msprt_p_value, plan_experiment
from workspace.errors import ComparisonError


def test_min_sample_size_matches_the_arcsine_approximation_and_the_textbook():
    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)
    for p0, mde in ((0.2, 0.05), (0.5, 0.1), (0.05, 0.02)):
        h = 2 * math.asin(math.sqrt(p0 + mde)) - 2 * math.asin(math.sqrt(p0))  # Cohen's h (what statsmodels solves)
        assert min_sample_size(mde, baseline_rate=p0) == pytest.approx(2 * z**2 / h**2, rel=0.02)
    assert min_sample_size(0.5, sd=1.0) == 63  # d = 0.5 at 80% power: 63 per group by the normal approximation
    assert min_sample_size(0.05, baseline_rate=0.2, power=0.9) > min_sample_size(0.05, baseline_rate=0.2)
    with pytest.raises(ComparisonError, match='baseline_rate= for a 0/1 outcome'):
        min_sample_size(0.05)
    with pytest.raises(ComparisonError, match='strictly between 0 and 1'):
        min_sample_size(0.3, baseline_rate=0.9)


def test_a_plan_is_checked_before_the_experiment_starts():
    plan = plan_experiment({'@production': 50, 'v4': 50}, mde=0.05, baseline_rate=0.2, decision='sequential')
    assert plan['baseline'] == '@production' and plan['min_units'] == min_sample_size(0.05, baseline_rate=0.2)
    with pytest.raises(ComparisonError, match='give min_units= .units per arm. or mde='):
        plan_experiment({'a': 1, 'b': 1})
    with pytest.raises(ComparisonError, match='sequential decision .* give mde='):
        plan_experiment({'a': 1, 'b': 1}, min_units=100, decision='sequential')
    with pytest.raises(ComparisonError, match="baseline 'c' is not an arm"):
        plan_experiment({'a': 1, 'b': 1}, min_units=100, baseline='c')


def _stream(rng, n, rate):
    return np.column_stack([rng.random(n), (rng.random(n) < rate).astype(float)])


def test_peeking_at_the_sequential_test_after_every_unit_keeps_false_positives_under_alpha():
    rng = np.random.default_rng(7)
    runs, alpha = 300, 0.05
    sequential = naive = 0
    for _ in range(runs):
        base, arm = _stream(rng, 400, 0.3), _stream(rng, 400, 0.3)  # no difference at all
        sequential += msprt_p_value(base, arm, tau=0.05) < alpha
        naive += _ever_significant_by_z(base, arm, alpha)
    assert sequential / runs <= alpha  # the always-valid p-value keeps its promise under continuous peeking
    assert naive / runs > 2 * alpha  # while a z-test read after every unit does not (why the fixed plan waits)


def _ever_significant_by_z(base, arm, alpha):
    events = sorted([(t, 0, x) for t, x in base] + [(t, 1, x) for t, x in arm])
    sums, counts = [0.0, 0.0], [0, 0]
    for _, which, x in events:
        sums[which] += x
        counts[which] += 1
        if min(counts) >= 20:
            p0, p1 = sums[0] / counts[0], sums[1] / counts[1]
            se = math.sqrt(max(p0 * (1 - p0), 1e-9) / counts[0] + max(p1 * (1 - p1), 1e-9) / counts[1])
            if abs(p1 - p0) / se > NormalDist().inv_cdf(1 - alpha / 2):
                return True
    return False


def test_the_sequential_test_finds_a_real_difference():
    rng = np.random.default_rng(3)
    assert msprt_p_value(_stream(rng, 600, 0.2), _stream(rng, 600, 0.35), tau=0.05) < 0.01
