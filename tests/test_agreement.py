"""Agreement statistics against references: Cohen's kappa against scikit-learn, TPR and TNR against hand-counted
tables, Wilson intervals against statsmodels' published figures, and the corrected pass rate against judgy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from workspace.analysis.agreement import agreement_stats, cohen_kappa, corrected_pass_rate, wilson

CASES = [
    # human, judge
    ([1, 1, 0, 0], [1, 0, 0, 0]),
    ([1, 1, 1, 1, 0, 0, 0, 0, 1, 0], [1, 1, 1, 0, 0, 0, 1, 0, 1, 1]),
    ([1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 1]),
    ([1, 1, 1, 0], [1, 1, 1, 0]),
    ([1] * 30 + [0] * 20, [1] * 25 + [0] * 5 + [0] * 15 + [1] * 5),
    (['pass', 'fail', 'pass', 'pass'], [True, False, False, True]),
]


@pytest.mark.parametrize('human, judge', CASES)
def test_kappa_matches_scikit_learn(human, judge):
    h = [v if not isinstance(v, str) else int(v == 'pass') for v in human]
    assert cohen_kappa(human, judge) == pytest.approx(cohen_kappa_score(h, [int(v) for v in judge]))


def test_kappa_is_nan_where_chance_agreement_is_total_like_scikit_learn():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # scikit-learn warns that kappa is undefined here
        reference = cohen_kappa_score([1, 1, 1], [1, 1, 1])
    assert np.isnan(reference) and np.isnan(cohen_kappa([1, 1, 1], [1, 1, 1]))


@pytest.mark.parametrize(
    'human, judge, table, tpr, tnr',
    [
        # hand-counted: tp, fn, fp, tn
        ([1, 1, 1, 1, 0, 0, 0, 0, 1, 0], [1, 1, 1, 0, 0, 0, 1, 0, 1, 1], (4, 1, 2, 3), 4 / 5, 3 / 5),
        ([1] * 30 + [0] * 20, [1] * 25 + [0] * 5 + [0] * 15 + [1] * 5, (25, 5, 5, 15), 25 / 30, 15 / 20),
        ([1, 0], [1, 0], (1, 0, 0, 1), 1.0, 1.0),
    ],
)
def test_tpr_tnr_from_hand_counted_tables(human, judge, table, tpr, tnr):
    result = agreement_stats(human, judge, resamples=500)
    assert (result.table['tp'], result.table['fn'], result.table['fp'], result.table['tn']) == table
    assert result.tpr[0] == pytest.approx(tpr) and result.tnr[0] == pytest.approx(tnr)
    assert result.accuracy[0] == pytest.approx((table[0] + table[3]) / sum(table))
    for name in ('tpr', 'tnr', 'accuracy'):
        value, low, high = getattr(result, name)
        assert low <= value <= high
    assert result.kappa[0] == pytest.approx(cohen_kappa_score(human, judge))


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson (1927): (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


@pytest.mark.parametrize('k, n', [(8, 10), (0, 10), (25, 30), (50, 100), (1, 3)])
def test_wilson_intervals(k, n):
    low, high = _wilson_by_hand(k, n)
    value, lo, hi = wilson(k, n)
    assert value == pytest.approx(k / n) and lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_corrected_pass_rate_matches_judgy():
    judgy = pytest.importorskip('judgy')
    rng = np.random.default_rng(3)
    human = rng.random(200) < 0.6
    judge_on_annotated = np.where(human, rng.random(200) < 0.9, rng.random(200) < 0.2)
    judged = rng.random(20_000) < 0.55
    ours = corrected_pass_rate(human, judge_on_annotated, judged, resamples=4000)
    np.random.seed(0)  # judgy draws from NumPy's global random state
    theta, low, high = judgy.estimate_success_rate(
        human.astype(int), judge_on_annotated.astype(int), judged.astype(int), bootstrap_iterations=4000
    )
    assert ours.estimate == pytest.approx(theta)
    # with 20,000 judged rows the judged rate hardly varies: both intervals come from the annotated rows
    assert ours.low == pytest.approx(low, abs=0.02) and ours.high == pytest.approx(high, abs=0.02)
    # with few judged rows, resampling them too widens the interval judgy holds fixed
    few = corrected_pass_rate(human, judge_on_annotated, judged[:30], resamples=4000)
    np.random.seed(0)
    _, low30, high30 = judgy.estimate_success_rate(
        human.astype(int), judge_on_annotated.astype(int), judged[:30].astype(int), bootstrap_iterations=4000
    )
    assert few.high - few.low > high30 - low30


def test_corrected_pass_rate_refuses_a_chance_level_judge():
    from workspace.errors import ComparisonError

    with pytest.raises(ComparisonError, match=r'no better than chance'):
        corrected_pass_rate([1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1])
    with pytest.raises(ComparisonError, match=r'both a pass and a fail'):
        corrected_pass_rate([1, 1, 1], [1, 1, 0], [1, 0])
