"""Paired comparison statistics: two versions' per-example scores on the same examples in, a verdict out.

`a` and `b` hold one score per example, same examples in the same order; for classification they are 0/1
correctness. Every difference is `b - a`, so a positive difference means `b` did better.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import TypeVar

import numpy as np

from workspace.core.metrics import encode_labels, label_metric
from workspace.display.formats import p_phrase, points
from workspace.errors import ComparisonError

__all__ = [
    'McNemarResult',
    'Comparison',
    'paired_bootstrap_ci',
    'mcnemar_exact',
    'required_sample_size',
    'compare_scores',
    'proportion_interval',
    'bootstrap_interval',
    'MetricComparison',
    'compare_label_metric',
    'label_metric_interval',
    'shared_draws',
    'resample_counts',
    'macro_f1_diff_ci',
]

T = TypeVar('T')

# Cells (resamples x examples) drawn at once; 4M keeps each chunk's index and value arrays near 32 MB apiece.
_CHUNK_CELLS = 4_000_000
# Indices kept by `shared_draws` for one (n, seed): 10,000 resamples of 2,000 examples, 80 MB as int32.
_KEEP_CELLS = 20_000_000
_PERMUTATIONS = 10_000


@dataclass(frozen=True)
class McNemarResult:
    """Discordant-pair counts and the exact two-sided McNemar p-value."""

    b_only: int
    a_only: int
    n_discordant: int
    p_value: float


@dataclass(frozen=True)
class Comparison:
    """Two versions' paired scores compared: means, difference `b - a` with its CI, p-value and verdict."""

    n: int
    metric: str
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool
    verdict: str


def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Return a and b as float arrays after checking they pair up and hold only numbers."""
    if len(a) != len(b):
        raise ComparisonError(
            f'a has {len(a)} scores but b has {len(b)}; pass one score per example for both, same examples in order'
        )
    if len(a) == 0:
        raise ComparisonError('a and b are empty; compare at least one example')
    arrays = []
    for name, values in (('a', a), ('b', b)):
        try:
            array = np.asarray(values, dtype=float)
        except (TypeError, ValueError) as exc:
            raise ComparisonError(f'{name} holds a non-number ({exc}); score failed rows as 0.0') from exc
        if array.ndim != 1:
            raise ComparisonError(f'{name} has shape {array.shape}; pass a flat sequence of per-example scores')
        missing = np.flatnonzero(np.isnan(array))
        if missing.size:
            raise ComparisonError(f'{name}[{missing[0]}] is {values[missing[0]]!r}; score failed rows as 0.0 instead')
        arrays.append(array)
    return arrays[0], arrays[1]


def check_confidence(confidence: float) -> float:
    """Return 1 - confidence after checking confidence is a probability."""
    if not 0 < confidence < 1:
        raise ComparisonError(f'confidence {confidence!r} is not between 0 and 1; pass e.g. 0.95')
    return 1 - confidence


def _chunks(total: int, n: int) -> Iterator[int]:
    """Yield row counts summing to `total`, each chunk of rows x n at most `_CHUNK_CELLS` cells."""
    rows = max(1, _CHUNK_CELLS // n)
    for start in range(0, total, rows):
        yield min(rows, total - start)


class _Draws:
    """The bootstrap resamples of one (n, seed): rows of n example indices drawn from `default_rng(seed)` in order.

    numpy's bounded integers come from one continuous stream of 32-bit draws, so the first r rows are the same
    whether drawn at once, in chunks or as the start of a longer draw: a 2,000-resample interval reads the first
    2,000 rows of a 10,000-resample one. Inside `shared_draws()` the rows are kept and every interval of the block
    on n examples with that seed reads them (drawing 10,000 x n indices costs more than using them), up to
    `_KEEP_CELLS` indices; a longer draw is drawn afresh from the seed, chunk by chunk, as outside a block.
    """

    def __init__(self, n: int, seed: int, *, keep: bool) -> None:
        self.n, self.seed, self.keep = n, seed, keep
        self.rng = np.random.default_rng(seed)
        self.kept: list[np.ndarray] = []
        self.counted: dict[int, np.ndarray] = {}
        # int32 indices: the same values as int64 (the same 32-bit draws), half the memory, faster to gather by
        self.dtype = np.int32 if n < 2**31 else np.int64

    def _fresh(self, total: int) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        for rows in _chunks(total, self.n):
            yield rng.integers(0, self.n, size=(rows, self.n), dtype=self.dtype)

    def _keeps(self, total: int) -> bool:
        return self.keep and total * self.n <= _KEEP_CELLS

    def rows(self, total: int) -> Iterator[np.ndarray]:
        """Yield the first `total` rows of resamples, in chunks of at most `_CHUNK_CELLS` cells."""
        if not self._keeps(total):
            yield from self._fresh(total)
            return
        done = 0
        for chunk in self.kept:
            if done >= total:
                return
            part = chunk[: total - done]
            done += len(part)
            yield part
        for rows in _chunks(total - done, self.n):
            chunk = self.rng.integers(0, self.n, size=(rows, self.n), dtype=self.dtype)
            self.kept.append(chunk)
            yield chunk

    def counts(self, total: int) -> np.ndarray:
        """Return how often each example is drawn in each of the first `total` rows, shape (total, n)."""
        if total in self.counted:
            return self.counted[total]
        n, parts = self.n, []
        for rows in self.rows(total):
            offsets = (np.arange(len(rows)) * n)[:, None]  # one bincount for the chunk: row r counts in r*n..r*n+n-1
            parts.append(np.bincount((rows + offsets).ravel(), minlength=len(rows) * n).reshape(-1, n))
        counts = np.concatenate(parts) if parts else np.zeros((0, n), dtype=np.int64)
        if self._keeps(total):
            self.counted[total] = counts
        return counts


_shared: contextvars.ContextVar[dict[tuple[int, int], _Draws] | None] = contextvars.ContextVar(
    'workspace_stats_draws', default=None
)


@contextlib.contextmanager
def shared_draws() -> Iterator[None]:
    """Draw each (n, seed)'s bootstrap resamples once in the block: every paired interval on n examples with that
    seed (several candidates against one baseline, their latency and macro-F1 intervals) reads the same rows,
    which is what each would draw alone, so the numbers are the same. Nested blocks share the outermost.

    >>> with shared_draws():
    ...     cis = [paired_bootstrap_ci([0, 1, 1, 0], b) for b in ([1, 1, 1, 0], [0, 1, 1, 1])]
    >>> cis
    [(0.25, 0.0, 0.75), (0.25, 0.0, 0.75)]
    """
    if _shared.get() is not None:
        yield
        return
    token = _shared.set({})
    try:
        yield
    finally:
        _shared.reset(token)


def _draws(n: int, seed: int) -> _Draws:
    shared = _shared.get()
    if shared is None:
        return _Draws(n, seed, keep=False)
    return shared.setdefault((n, seed), _Draws(n, seed, keep=True))


def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """Return how often each of n examples is drawn in each bootstrap resample, shape (resamples, n): the rows of
    `paired_bootstrap_ci`'s draws with that seed, counted (the weights of a statistic that sums over examples)."""
    return _draws(n, seed).counts(resamples)


#: Intervals and p-values already resampled, by a digest of the scores they came from and their knobs. A
#: comparison view measures the same pairs again on every refresh or change of baseline, and resampling is most of
#: its cost; the statistics are pure functions of these keys, so a kept value is never stale.
_MEMO: OrderedDict[Hashable, object] = OrderedDict()
_MEMO_SIZE = 1024
_memo_lock = threading.Lock()


def _digest(*arrays: np.ndarray) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for array in arrays:
        h.update(np.ascontiguousarray(array, dtype=float).tobytes())
        h.update(b'|')
    return h.digest()


def _memoized(key: Hashable, compute: Callable[[], T]) -> T:
    with _memo_lock:
        if key in _MEMO:
            _MEMO.move_to_end(key)
            return _MEMO[key]  # type: ignore[return-value]
    value = compute()
    with _memo_lock:
        _MEMO[key] = value
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
    return value


def paired_bootstrap_ci(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Return `(mean(b) - mean(a), low, high)`, a percentile bootstrap CI resampling examples as pairs.

    >>> paired_bootstrap_ci([0, 0, 1, 1], [1, 1, 1, 1])
    (0.5, 0.0, 1.0)
    """
    alpha = check_confidence(confidence)
    if resamples < 1:
        raise ComparisonError(f'resamples {resamples!r} is below 1; pass e.g. 10_000')
    xa, xb = _paired(a, b)
    diff = float(xb.mean() - xa.mean())
    if len(xa) == 1:
        return diff, diff, diff
    deltas = xb - xa

    def interval() -> tuple[float, float]:
        draws = _draws(len(deltas), seed).rows(resamples)
        if np.all(np.abs(deltas) <= 1) and np.array_equal(deltas, np.round(deltas)):
            # 0/1 scores: their differences gathered as int8 and summed exactly are the float means to the bit
            # (every partial sum is a whole number), at an eighth of the memory traffic
            small = deltas.astype(np.int8)
            means = np.concatenate([small[indices].sum(axis=1, dtype=np.int64) / len(deltas) for indices in draws])
        else:
            means = np.concatenate([deltas[indices].mean(axis=1) for indices in draws])
        low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
        return float(low), float(high)

    low, high = _memoized(('bootstrap', _digest(deltas), resamples, seed, alpha), interval)
    return diff, low, high


def _binary(values: Sequence[float], name: str) -> np.ndarray:
    """Return values as a bool array after checking each is 0, 1 or a bool."""
    array = np.asarray(values)
    if array.dtype.kind not in 'biuf' or array.ndim != 1:
        raise ComparisonError(
            f'{name} must be a flat sequence of 0/1 or bool correctness, got dtype {array.dtype}; score each example'
        )
    bad = np.flatnonzero((array != 0) & (array != 1))
    if bad.size:
        raise ComparisonError(
            f'{name}[{bad[0]}] is {array[bad[0]].item()!r}, not 0/1 or bool; '
            'for graded scores use compare_scores(..., binary=False)'
        )
    return array.astype(bool)


def mcnemar_exact(a_correct: Sequence[float], b_correct: Sequence[float]) -> McNemarResult:
    """Run the exact two-sided McNemar test: a binomial test with p = 0.5 on the pairs only one version got right.

    >>> mcnemar_exact([1, 1, 0, 0, 0, 0], [1, 0, 1, 1, 1, 1])
    McNemarResult(b_only=4, a_only=1, n_discordant=5, p_value=0.375)
    """
    if len(a_correct) != len(b_correct):
        raise ComparisonError(
            f'a_correct has {len(a_correct)} values but b_correct has {len(b_correct)}; pass one per example for both'
        )
    if len(a_correct) == 0:
        raise ComparisonError('a_correct and b_correct are empty; compare at least one example')
    xa, xb = _binary(a_correct, 'a_correct'), _binary(b_correct, 'b_correct')
    b_only, a_only = int(np.sum(xb & ~xa)), int(np.sum(xa & ~xb))
    n = b_only + a_only
    # Under H0 each discordant pair goes either way with p = 0.5; the distribution is symmetric, so the
    # two-sided p-value is twice the smaller tail, in exact integers until the final division.
    term, tail = 1, 0
    for i in range(min(b_only, a_only) + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    return McNemarResult(b_only=b_only, a_only=a_only, n_discordant=n, p_value=min(1.0, 2 * tail / 2**n))


def required_sample_size(p_discordant: float, effect: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """Return about how many examples McNemar's test needs to detect an accuracy difference of `effect`.

    Connor (1987): `n = (z_{1-alpha/2} * sqrt(psi) + z_power * sqrt(psi - effect**2))**2 / effect**2`, with psi
    the fraction of discordant pairs. Since psi can be no smaller than the effect, psi <= effect is raised to
    effect + 1e-6.

    >>> required_sample_size(0.2, 0.05)
    626
    """
    if not 0 < effect < 1:
        raise ComparisonError(f'effect {effect!r} is not between 0 and 1; pass an accuracy difference, e.g. 0.05')
    if not 0 <= p_discordant <= 1:
        raise ComparisonError(f'p_discordant {p_discordant!r} is not between 0 and 1; pass a fraction of examples')
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ComparisonError(f'alpha {alpha!r} and power {power!r} must be between 0 and 1; e.g. 0.05 and 0.8')
    psi = max(p_discordant, effect + 1e-6)
    z_alpha, z_power = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    return math.ceil((z_alpha * math.sqrt(psi) + z_power * math.sqrt(psi - effect**2)) ** 2 / effect**2)


def _sign_flip_p_value(deltas: np.ndarray, *, seed: int) -> float:
    """Return the two-sided p-value of a paired sign-flip permutation test of mean(deltas) = 0."""
    # The relative tolerance counts flips that reproduce the observed mean up to float rounding as ties.

    def p_value() -> float:
        threshold, rng, extreme = abs(deltas.mean()) * (1 - 1e-9), np.random.default_rng(seed), 0
        for rows in _chunks(_PERMUTATIONS, len(deltas)):
            signs = rng.integers(0, 2, size=(rows, len(deltas))) * 2 - 1
            extreme += int(np.sum(np.abs((signs * deltas).mean(axis=1)) >= threshold))
        return (extreme + 1) / (_PERMUTATIONS + 1)

    return _memoized(('sign_flip', _digest(deltas), _PERMUTATIONS, seed), p_value)


def _graded_sample_size(deltas: np.ndarray, effect: float, *, alpha: float, power: float = 0.8) -> int | None:
    """Return `((z_{1-alpha/2} + z_power) * sd(deltas) / effect)**2` rounded up, None if sd is 0 or unknown."""
    if not effect > 0:
        raise ComparisonError(f'detectable_effect {effect!r} is not above 0; pass a score difference, e.g. 0.05')
    sd = float(np.std(deltas, ddof=1)) if len(deltas) > 1 else 0.0
    if sd == 0:
        return None
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return math.ceil((z * sd / effect) ** 2)


def _verdict(
    *,
    name_a: str,
    name_b: str,
    split: str,
    n: int,
    diff: float,
    low: float,
    high: float,
    p: float,
    confidence: float,
    significant: bool,
    needed: int | None,
    effect: float,
) -> str:
    """Say in one sentence which version did better, or that neither did and how many examples would tell."""
    ci = f'{confidence * 100:.3g}% CI {points(low)} to {points(high)}, {p_phrase(p)}'
    if significant:
        word = 'better' if low > 0 else 'worse'
        return f'{name_b} is {word} than {name_a} on {split} ({points(diff)} points, {ci}, n = {n})'
    target = f'{effect * 100:.3g} points'
    if needed is None:
        more = f'the scores do not vary enough to estimate how many examples would detect {target}'
    else:
        more = f'about {needed:,} examples would be needed to detect {target}'
    return (
        f'no detectable difference between {name_b} and {name_a} on {split} at n = {n} '
        f'({points(diff)} points, {ci}); {more}'
    )


def compare_scores(
    a: Sequence[float],
    b: Sequence[float],
    *,
    name_a: str,
    name_b: str,
    split: str,
    metric: str = 'accuracy',
    binary: bool = True,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
    detectable_effect: float = 0.05,
) -> Comparison:
    """Compare version b with version a on the same examples: bootstrap CI, McNemar or sign-flip p, and a verdict.

    Binary scores use the exact McNemar test and Connor's sample size at the observed discordant fraction;
    graded scores use a 10,000-flip paired sign-flip test and `n = ((z_{1-alpha/2} + z_0.8) * sd(b - a) / effect)**2`.

    >>> result = compare_scores([0] * 20 + [1] * 20, [1] * 40, name_a='v1', name_b='v2', split='dev')
    >>> result.diff, result.significant, result.verdict.startswith('v2 is better than v1 on dev (+50.0 points')
    (0.5, True, True)
    """
    alpha = check_confidence(confidence)
    xa, xb = _paired(a, b)
    if binary:
        test = mcnemar_exact(a, b)
        p_value = test.p_value
        needed: int | None = required_sample_size(test.n_discordant / len(xa), detectable_effect, alpha=alpha)
    else:
        p_value = _sign_flip_p_value(xb - xa, seed=seed)
        needed = _graded_sample_size(xb - xa, detectable_effect, alpha=alpha)
    diff, low, high = paired_bootstrap_ci(a, b, confidence=confidence, resamples=resamples, seed=seed)
    significant = p_value < alpha and (low > 0 or high < 0)
    verdict = _verdict(
        name_a=name_a,
        name_b=name_b,
        split=split,
        n=len(xa),
        diff=diff,
        low=low,
        high=high,
        p=p_value,
        confidence=confidence,
        significant=significant,
        needed=needed,
        effect=detectable_effect,
    )
    return Comparison(
        n=len(xa),
        metric=metric,
        mean_a=float(xa.mean()),
        mean_b=float(xb.mean()),
        diff=diff,
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        significant=significant,
        verdict=verdict,
    )


def proportion_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Return the Wilson score interval of a proportion (scipy's `binomtest(...).proportion_ci`).

    >>> [round(x, 3) for x in proportion_interval(7, 10)]
    [0.397, 0.892]
    """
    from scipy.stats import binomtest

    check_confidence(confidence)
    if n <= 0:
        raise ComparisonError(f'n = {n!r}; an interval needs at least one example')
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method='wilson')
    return float(ci.low), float(ci.high)


def bootstrap_interval(
    values: Sequence[float], *, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Return a percentile bootstrap interval of the mean of `values` (scipy's `bootstrap`)."""
    from scipy.stats import bootstrap

    check_confidence(confidence)
    data = np.asarray(values, dtype=float)
    if len(data) < 2 or np.all(data == data[0]):
        value = float(data.mean()) if len(data) else math.nan
        return value, value
    result = bootstrap(
        (data,), np.mean, confidence_level=confidence, n_resamples=resamples, method='percentile', rng=seed
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclass(frozen=True)
class MetricComparison:
    """A split-level metric of two versions' predictions on the same examples: b - a, its interval and p-value."""

    metric: str
    n: int
    value_a: float
    value_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float


def compare_label_metric(
    metric: str,
    expected: Sequence[str],
    predicted_a: Sequence[str | None],
    predicted_b: Sequence[str | None],
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> MetricComparison:
    """Compare a split-level label metric (accuracy, macro-F1, balanced accuracy) of b against a, paired.

    The p-value is a paired permutation test (scipy's `permutation_test` swapping the two versions' predictions
    within each example), the interval a paired percentile bootstrap of the difference (scipy's `bootstrap`):
    both work for metrics that need the whole split, which a per-example test cannot express.

    >>> result = compare_label_metric('macro_f1', ['a'] * 30 + ['b'] * 20, ['a'] * 50, ['a'] * 30 + ['b'] * 20)
    >>> round(result.diff, 3), result.p_value < 0.001
    (0.625, True)
    """
    from scipy.stats import bootstrap, permutation_test

    check_confidence(confidence)
    if not (len(expected) == len(predicted_a) == len(predicted_b)) or not expected:
        raise ComparisonError(
            f'expected, a and b have {len(expected)}, {len(predicted_a)} and {len(predicted_b)} labels; '
            'pass one per example for each, same examples in order'
        )
    truth, guess_a, classes = encode_labels(expected, predicted_a)
    _, guess_b, _ = encode_labels(expected, predicted_b)
    k = len(classes)

    def diff(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        a, b = np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1)
        return label_metric(metric, truth, b, k) - label_metric(metric, truth, a, k)

    def resampled(index: np.ndarray, axis: int = -1) -> np.ndarray:
        index = np.moveaxis(np.asarray(index, dtype=np.int64), axis, -1)
        return label_metric(metric, truth[index], guess_b[index], k) - label_metric(
            metric, truth[index], guess_a[index], k
        )

    observed = float(diff(guess_a, guess_b))
    if np.array_equal(guess_a, guess_b):
        p_value, low, high = 1.0, observed, observed
    else:
        test = permutation_test(
            (guess_a, guess_b),
            diff,
            permutation_type='samples',
            vectorized=True,
            n_resamples=resamples,
            alternative='two-sided',
            rng=seed,
        )
        p_value = float(test.pvalue)
        ci = bootstrap(
            (np.arange(len(truth)),),
            resampled,
            vectorized=True,
            confidence_level=confidence,
            n_resamples=resamples,
            method='percentile',
            rng=seed,
        ).confidence_interval
        low, high = float(ci.low), float(ci.high)
    value_a = float(label_metric(metric, truth, guess_a, k))
    return MetricComparison(metric, len(truth), value_a, value_a + observed, observed, low, high, min(1.0, p_value))


def label_metric_interval(
    metric: str,
    expected: Sequence[str],
    predicted: Sequence[str | None],
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Return a percentile bootstrap interval of a split-level label metric (scipy's `bootstrap`, vectorised).

    >>> low, high = label_metric_interval('macro_f1', ['a'] * 30 + ['b'] * 20, ['a'] * 40 + ['b'] * 10)
    >>> 0.6 < low < high < 1.0
    True
    """
    from scipy.stats import bootstrap

    check_confidence(confidence)
    truth, guess, classes = encode_labels(expected, predicted)
    if len(truth) < 2:
        value = float(label_metric(metric, truth, guess, len(classes)))
        return value, value

    def statistic(index: np.ndarray, axis: int = -1) -> np.ndarray:
        index = np.moveaxis(np.asarray(index, dtype=np.int64), axis, -1)
        return label_metric(metric, truth[index], guess[index], len(classes))

    ci = bootstrap(
        (np.arange(len(truth)),), statistic, vectorized=True, confidence_level=confidence,
        n_resamples=resamples, method='percentile', rng=seed,
    ).confidence_interval  # fmt: skip
    return float(ci.low), float(ci.high)


def macro_f1_diff_ci(
    expected: Sequence[str],
    pred_a: Sequence[str | None],
    pred_b: Sequence[str | None],
    *,
    confidence: float = 0.95,
    resamples: int = 2_000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Return (macro-F1 of b - macro-F1 of a, low, high) by a paired percentile bootstrap over examples, resampled
    with `paired_bootstrap_ci`'s draws (`resample_counts`) and vectorised over resamples.

    >>> [round(x, 3) for x in macro_f1_diff_ci(['x', 'y', 'y'], ['x', 'x', 'y'], ['x', 'y', 'y'], resamples=200)]
    [0.333, 0.0, 1.0]
    """
    alpha = check_confidence(confidence)
    key = ('macro_f1_diff', hashlib.blake2b(json.dumps([expected, pred_a, pred_b]).encode(), digest_size=16).digest())
    return _memoized(
        (*key, resamples, seed, alpha), lambda: _macro_f1_diff(expected, pred_a, pred_b, alpha, resamples, seed)
    )


def _macro_f1_diff(
    expected: Sequence[str],
    pred_a: Sequence[str | None],
    pred_b: Sequence[str | None],
    alpha: float,
    resamples: int,
    seed: int,
) -> tuple[float, float, float]:
    from scipy import sparse

    labels = sorted(set(expected))
    index = {label: i for i, label in enumerate(labels)}
    n, k = len(expected), len(labels)
    truth_of = np.array([index[e] for e in expected])

    def one_hot(rows: np.ndarray, columns: np.ndarray) -> sparse.csr_matrix:
        return sparse.csr_matrix((np.ones(len(rows)), (rows, columns)), shape=(n, k))

    truth = one_hot(np.arange(n), truth_of)

    def guesses(pred: Sequence[str | None]) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
        rows = np.array([i for i, p in enumerate(pred) if p in index], dtype=int)
        guessed_of = np.array([index[pred[i]] for i in rows], dtype=int)  # type: ignore[index]
        hit = guessed_of == truth_of[rows]
        return one_hot(rows, guessed_of), one_hot(rows[hit], guessed_of[hit])

    # one column per resample, column 0 the observed sample; laid out once for the five products below
    weights = np.ascontiguousarray(np.vstack([np.ones(n), resample_counts(n, resamples, seed)]).T)

    def counts(one_hot_rows: sparse.csr_matrix) -> np.ndarray:
        # weights @ one-hot rows, as a sparse product: whole counts, so the sums are exact in any order
        return np.ascontiguousarray((one_hot_rows.T @ weights).T)

    support = counts(truth)
    present = support > 0

    def macro(pred: Sequence[str | None]) -> np.ndarray:
        guessed, hits = guesses(pred)
        predicted, tp = counts(guessed), counts(hits)
        f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=(support + predicted) > 0)
        return (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)

    diffs = macro(pred_b) - macro(pred_a)
    low, high = np.quantile(diffs[1:], [alpha / 2, 1 - alpha / 2])
    return float(diffs[0]), float(low), float(high)
