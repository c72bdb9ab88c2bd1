"""Tests for workspace.core.stats: McNemar against scipy, bootstrap behaviour, sample sizes and verdicts."""

from __future__ import annotations

import doctest
import math
import re

import numpy as np
import pytest
import scipy.stats

from workspace.core import stats
from workspace.core.stats import compare_scores, mcnemar_exact, paired_bootstrap_ci, required_sample_size
from workspace.display import formats
from workspace.errors import ComparisonError


def pairs(b_only: int, a_only: int, both: int = 0, neither: int = 0) -> tuple[list[int], list[int]]:
    """Build paired 0/1 correctness with the given counts of each (a, b) outcome."""
    a = [0] * b_only + [1] * a_only + [1] * both + [0] * neither
    b = [1] * b_only + [0] * a_only + [1] * both + [0] * neither
    return a, b


def test_docstring_examples_run() -> None:
    result = doctest.testmod(stats, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --- McNemar ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('b_only', 'a_only', 'both', 'neither'),
    [
        pytest.param(0, 0, 7, 3, id='no-discordant'),
        pytest.param(0, 0, 1, 0, id='single-concordant'),
        pytest.param(1, 0, 0, 0, id='n1-b'),
        pytest.param(0, 1, 0, 0, id='n1-a'),
        pytest.param(5, 0, 0, 0, id='all-discordant-one-way'),
        pytest.param(4, 6, 0, 0, id='all-discordant-both-ways'),
        pytest.param(3, 3, 10, 4, id='tie-even'),
        pytest.param(1, 1, 0, 0, id='tie-small'),
        pytest.param(8, 0, 30, 2, id='b-only'),
        pytest.param(2, 7, 20, 11, id='a-better'),
        pytest.param(15, 5, 60, 20, id='moderate'),
        pytest.param(30, 10, 0, 0, id='large-gap'),
        pytest.param(101, 70, 500, 29, id='large-n'),
        pytest.param(1000, 1100, 0, 0, id='very-large-n'),
    ],
)
def test_mcnemar_matches_scipy_binomtest(b_only: int, a_only: int, both: int, neither: int) -> None:
    a, b = pairs(b_only, a_only, both, neither)
    result = mcnemar_exact(a, b)
    n = b_only + a_only
    reference = 1.0 if n == 0 else scipy.stats.binomtest(b_only, n, 0.5, alternative='two-sided').pvalue
    assert (result.b_only, result.a_only, result.n_discordant) == (b_only, a_only, n)
    assert result.p_value == pytest.approx(reference, rel=1e-9, abs=1e-300)


def test_mcnemar_accepts_bools_and_float_zeros_and_ones() -> None:
    a, b = pairs(6, 1, 3)
    expected = mcnemar_exact(a, b)
    assert mcnemar_exact([bool(x) for x in a], [bool(x) for x in b]) == expected
    assert mcnemar_exact([float(x) for x in a], np.array(b, dtype=float).tolist()) == expected


@pytest.mark.parametrize(
    ('a', 'b', 'message'),
    [
        ([1, 0.5], [1, 1], r'a_correct\[1\] is 0.5, not 0/1 or bool; for graded scores use'),
        ([1, 1], [1, 2], r'b_correct\[1\] is 2, not 0/1'),
        (['yes'], [1], 'must be a flat sequence of 0/1 or bool'),
        ([1, 0], [1], 'a_correct has 2 values but b_correct has 1'),
        ([], [], 'at least one example'),
    ],
)
def test_mcnemar_rejects_bad_input(a: list[object], b: list[object], message: str) -> None:
    with pytest.raises(ComparisonError, match=message):
        mcnemar_exact(a, b)  # type: ignore[arg-type]


# --- bootstrap -------------------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_true_difference() -> None:
    rng = np.random.default_rng(42)
    a = (rng.random(500) < 0.6).astype(float)
    b = (rng.random(500) < 0.7).astype(float)  # the true difference is 0.1
    diff, low, high = paired_bootstrap_ci(a, b)
    assert diff == pytest.approx(b.mean() - a.mean())
    assert low < 0.1 < high
    assert low < diff < high


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    # Graded scores: with 0/1 scores the percentiles fall on a coarse grid that two seeds can share.
    rng = np.random.default_rng(1)
    a, b = rng.random(50).tolist(), rng.random(50).tolist()
    assert paired_bootstrap_ci(a, b, seed=3) == paired_bootstrap_ci(a, b, seed=3)
    assert paired_bootstrap_ci(a, b, seed=3) != paired_bootstrap_ci(a, b, seed=4)


def test_bootstrap_width_is_close_to_normal_approximation() -> None:
    rng = np.random.default_rng(7)
    correct = rng.random(200) < 0.7
    flipped = rng.random(200) < 0.2  # b disagrees with a on about a fifth of the examples
    a = correct.astype(float)
    b = np.where(flipped, ~correct, correct).astype(float)
    _, low, high = paired_bootstrap_ci(a, b)
    deltas = b - a
    normal_width = 2 * scipy.stats.norm.ppf(0.975) * deltas.std(ddof=1) / math.sqrt(len(deltas))
    assert (high - low) == pytest.approx(normal_width, rel=0.25)


def test_bootstrap_identical_inputs_give_zero_interval() -> None:
    a = [1, 0, 1, 1, 0, 0.5]
    assert paired_bootstrap_ci(a, list(a)) == (0.0, 0.0, 0.0)


def test_bootstrap_single_example_returns_the_difference_three_times() -> None:
    assert paired_bootstrap_ci([0.25], [1.0]) == (0.75, 0.75, 0.75)


def test_bootstrap_chunked_draws_agree_with_one_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = pairs(30, 12, 120, 38)
    whole = paired_bootstrap_ci(a, b)
    monkeypatch.setattr(stats, '_CHUNK_CELLS', 1_000)  # 5 resamples of 200 examples per chunk
    monkeypatch.setattr(stats, '_MEMO', type(stats._MEMO)())  # resampled again, not remembered
    chunked = paired_bootstrap_ci(a, b)
    assert chunked == whole  # one stream of draws, whatever the chunks


@pytest.mark.parametrize('keep_cells', [20_000_000, 300 * 2_000])  # all kept; the 10,000 resamples drawn afresh
def test_shared_draws_give_each_interval_its_own_numbers(monkeypatch: pytest.MonkeyPatch, keep_cells: int) -> None:
    rng = np.random.default_rng(5)
    a, b, c = (rng.random(300).tolist() for _ in range(3))
    alone = [paired_bootstrap_ci(a, b), paired_bootstrap_ci(a, c, resamples=2_000), stats.resample_counts(300, 50, 0)]
    monkeypatch.setattr(stats, '_MEMO', type(stats._MEMO)())
    monkeypatch.setattr(stats, '_KEEP_CELLS', keep_cells)
    with stats.shared_draws():  # the 2,000- and 50-resample draws are the start of the 10,000 kept
        shared = [
            paired_bootstrap_ci(a, b),
            paired_bootstrap_ci(a, c, resamples=2_000),
            stats.resample_counts(300, 50, 0),
        ]
    assert shared[:2] == alone[:2]
    assert np.array_equal(shared[2], alone[2])
    draws = np.random.default_rng(0).integers(0, 300, size=(50, 300))
    assert np.array_equal(alone[2], np.stack([np.bincount(row, minlength=300) for row in draws]))


@pytest.mark.parametrize(
    ('a', 'b', 'kwargs', 'message'),
    [
        ([1, 0, 1], [1, 0], {}, 'a has 3 scores but b has 2; pass one score per example for both'),
        ([], [], {}, 'a and b are empty'),
        ([1.0, float('nan')], [1.0, 0.0], {}, r'a\[1\] is nan; score failed rows as 0.0'),
        ([1.0, None], [1.0, 0.0], {}, r'a\[1\] is None; score failed rows as 0.0'),
        ([1.0, 'x'], [1.0, 0.0], {}, 'a holds a non-number'),
        ([1, 0], [1, 1], {'confidence': 95}, 'confidence 95 is not between 0 and 1'),
        ([1, 0], [1, 1], {'resamples': 0}, 'resamples 0 is below 1'),
    ],
)
def test_bootstrap_rejects_bad_input(a: list[object], b: list[object], kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ComparisonError, match=message):
        paired_bootstrap_ci(a, b, **kwargs)  # type: ignore[arg-type]


# --- sample size -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('p_discordant', 'effect', 'alpha', 'power'),
    [(0.2, 0.05, 0.05, 0.8), (0.1, 0.05, 0.05, 0.8), (0.3, 0.1, 0.01, 0.9), (0.5, 0.02, 0.05, 0.8)],
)
def test_required_sample_size_matches_connor_formula(
    p_discordant: float, effect: float, alpha: float, power: float
) -> None:
    z_alpha, z_power = scipy.stats.norm.ppf(1 - alpha / 2), scipy.stats.norm.ppf(power)
    n = (z_alpha * math.sqrt(p_discordant) + z_power * math.sqrt(p_discordant - effect**2)) ** 2 / effect**2
    assert required_sample_size(p_discordant, effect, alpha=alpha, power=power) == math.ceil(n)


def test_required_sample_size_clamps_discordant_fraction_to_the_effect() -> None:
    at_effect = required_sample_size(0.05 + 1e-6, 0.05)
    assert required_sample_size(0.0, 0.05) == at_effect
    assert required_sample_size(0.03, 0.05) == at_effect
    assert required_sample_size(0.2, 0.05) > at_effect


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'p_discordant': 0.2, 'effect': 0.0}, 'effect 0.0 is not between 0 and 1'),
        ({'p_discordant': 1.5, 'effect': 0.05}, 'p_discordant 1.5 is not between 0 and 1'),
        ({'p_discordant': 0.2, 'effect': 0.05, 'power': 80}, 'power 80 must be between 0 and 1'),
    ],
)
def test_required_sample_size_rejects_bad_input(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ComparisonError, match=message):
        required_sample_size(**kwargs)  # type: ignore[arg-type]


# --- verdicts --------------------------------------------------------------------------------------------------

VERDICT = {'name_a': 'v1', 'name_b': 'v3', 'split': 'dev', 'confidence': 0.95, 'effect': 0.05}


@pytest.mark.parametrize(
    ('numbers', 'text'),
    [
        (
            {'n': 40, 'diff': 0.06, 'low': 0.015, 'high': 0.105, 'p': 0.0123, 'significant': True, 'needed': 90},
            'v3 is better than v1 on dev (+6.0 points, 95% CI +1.5 to +10.5, p = 0.01, n = 40)',
        ),
        (
            {'n': 40, 'diff': -0.06, 'low': -0.105, 'high': -0.015, 'p': 0.0123, 'significant': True, 'needed': 90},
            'v3 is worse than v1 on dev (-6.0 points, 95% CI -10.5 to -1.5, p = 0.01, n = 40)',
        ),
        (
            {'n': 40, 'diff': 0.025, 'low': -0.03, 'high': 0.08, 'p': 0.4512, 'significant': False, 'needed': 380},
            'no detectable difference between v3 and v1 on dev at n = 40 (+2.5 points, 95% CI -3.0 to +8.0, p = 0.45); '
            'about 380 examples would be needed to detect 5 points',
        ),
        (
            {'n': 48, 'diff': 0.146, 'low': -0.042, 'high': 0.333, 'p': 0.21, 'significant': False, 'needed': 1503},
            'no detectable difference between v3 and v1 on dev at n = 48 (+14.6 points, 95% CI -4.2 to +33.3, '
            'p = 0.21); about 1,503 examples would be needed to detect 5 points',
        ),
        (
            {'n': 500, 'diff': 0.2, 'low': 0.15, 'high': 0.25, 'p': 2e-9, 'significant': True, 'needed': 90},
            'v3 is better than v1 on dev (+20.0 points, 95% CI +15.0 to +25.0, p < 0.001, n = 500)',
        ),
        (
            {'n': 3, 'diff': 0.0, 'low': 0.0, 'high': 0.0, 'p': 1.0, 'significant': False, 'needed': None},
            'no detectable difference between v3 and v1 on dev at n = 3 (+0.0 points, 95% CI +0.0 to +0.0, p = 1.00); '
            'the scores do not vary enough to estimate how many examples would detect 5 points',
        ),
    ],
)
def test_verdict_wording(numbers: dict[str, object], text: str) -> None:
    assert stats._verdict(**VERDICT, **numbers) == text  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ('p', 'shown', 'sentence'),
    [
        (1.0, '1.00', 'p = 1.00'),
        (0.6234, '0.62', 'p = 0.62'),
        (0.45, '0.45', 'p = 0.45'),
        (0.0123, '0.01', 'p = 0.01'),
        (0.01, '0.01', 'p = 0.01'),
        (0.0099, '0.010', 'p = 0.010'),
        (0.0042, '0.004', 'p = 0.004'),
        (0.001, '0.001', 'p = 0.001'),
        (0.0009, '<0.001', 'p < 0.001'),
        (4.17e-07, '<0.001', 'p < 0.001'),
        (0.0, '<0.001', 'p < 0.001'),
        (float('nan'), '', 'no p-value'),
    ],
)
def test_p_value_format(p: float, shown: str, sentence: str) -> None:
    assert formats.format_p(p) == shown
    assert formats.p_phrase(p) == sentence


POINT = r'[+-]\d+\.\d'


def test_compare_scores_significant_better() -> None:
    a, b = pairs(b_only=8, a_only=0, both=30, neither=2)
    result = compare_scores(a, b, name_a='v1', name_b='v3', split='dev')
    assert (result.n, result.mean_a, result.mean_b, result.diff) == (40, 0.75, 0.95, pytest.approx(0.2))
    assert result.p_value == pytest.approx(2 / 2**8) and result.significant
    assert 0 < result.ci_low < result.diff < result.ci_high
    pattern = rf'v3 is better than v1 on dev \(\+20\.0 points, 95% CI {POINT} to {POINT}, p = 0\.008, n = 40\)'
    assert re.fullmatch(pattern, result.verdict)
    assert f'95% CI +{result.ci_low * 100:.1f} to +{result.ci_high * 100:.1f}' in result.verdict


def test_compare_scores_significant_worse() -> None:
    a, b = pairs(b_only=0, a_only=8, both=30, neither=2)
    result = compare_scores(a, b, name_a='v1', name_b='v3', split='dev')
    assert result.significant and result.ci_high < 0
    pattern = rf'v3 is worse than v1 on dev \(-20\.0 points, 95% CI {POINT} to {POINT}, p = 0\.008, n = 40\)'
    assert re.fullmatch(pattern, result.verdict)


def test_compare_scores_not_significant_names_the_sample_size() -> None:
    a, b = pairs(b_only=3, a_only=2, both=30, neither=5)
    result = compare_scores(a, b, name_a='v1', name_b='v3', split='dev')
    needed = required_sample_size(5 / 40, 0.05, alpha=0.05)
    assert not result.significant and result.p_value == 1.0
    assert re.fullmatch(
        rf'no detectable difference between v3 and v1 on dev at n = 40 '
        rf'\(\+2\.5 points, 95% CI {POINT} to {POINT}, p = 1\.00\); '
        rf'about {needed} examples would be needed to detect 5 points',
        result.verdict,
    )


def test_compare_scores_single_example() -> None:
    result = compare_scores([0], [1], name_a='v1', name_b='v3', split='dev')
    assert (result.n, result.diff, result.ci_low, result.ci_high, result.p_value) == (1, 1.0, 1.0, 1.0, 1.0)
    assert not result.significant
    assert result.verdict.startswith(
        'no detectable difference between v3 and v1 on dev at n = 1 (+100.0 points, 95% CI +100.0 to +100.0'
    )


def test_compare_scores_mismatched_lengths() -> None:
    with pytest.raises(ComparisonError, match='a has 3 scores but b has 2; pass one score per example for both'):
        compare_scores([1, 0, 1], [1, 0], name_a='v1', name_b='v3', split='dev')


def test_compare_scores_binary_rejects_graded_scores() -> None:
    with pytest.raises(ComparisonError, match=r'binary=False'):
        compare_scores([0.2, 0.9], [0.4, 0.8], name_a='v1', name_b='v3', split='dev')


def test_compare_scores_graded_uses_sign_flip_test_close_to_exact_permutation() -> None:
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 1, 12)
    b = np.clip(a + rng.normal(0.1, 0.15, 12), 0, 1)
    result = compare_scores(
        a.tolist(), b.tolist(), name_a='v1', name_b='v3', split='dev', metric='rougeL', binary=False
    )
    exact = scipy.stats.permutation_test(
        (b - a,), np.mean, permutation_type='samples', alternative='two-sided', n_resamples=np.inf
    ).pvalue
    assert result.metric == 'rougeL'
    assert result.p_value == pytest.approx(exact, abs=0.01)
    again = compare_scores(a.tolist(), b.tolist(), name_a='v1', name_b='v3', split='dev', binary=False)
    assert again.p_value == result.p_value


def test_compare_scores_graded_sample_size_uses_paired_normal_approximation() -> None:
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 1, 30)
    b = np.clip(a + rng.normal(0.0, 0.2, 30), 0, 1)
    result = compare_scores(a.tolist(), b.tolist(), name_a='v1', name_b='v3', split='dev', binary=False)
    z = scipy.stats.norm.ppf(0.975) + scipy.stats.norm.ppf(0.8)
    needed = math.ceil((z * np.std(b - a, ddof=1) / 0.05) ** 2)
    assert not result.significant
    assert result.verdict.endswith(f'; about {needed} examples would be needed to detect 5 points')


def test_compare_scores_identical_graded_scores() -> None:
    scores = [0.1, 0.5, 0.9]
    result = compare_scores(scores, scores, name_a='v1', name_b='v3', split='dev', binary=False)
    numbers = (result.diff, result.ci_low, result.ci_high, result.p_value, result.significant)
    assert numbers == (0.0, 0.0, 0.0, 1.0, False)
