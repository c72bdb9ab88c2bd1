"""A judge checked against people: Cohen's kappa, true-positive and true-negative rates with intervals, and a
judged pass rate corrected for the judge's error rates.

People's verdicts come from `annotate.py` (pass or fail on one prediction); the judge's verdicts on the same
predictions come from the request store (judged once, then read back). A judge that passes what people pass and
fails what people fail has TPR and TNR near 1; kappa says how much of its agreement beats chance.

The corrected pass rate is the Rogan-Gladen estimator `(observed + TNR - 1) / (TPR + TNR - 1)`, the estimate the
`judgy` package makes. judgy is not called: it draws from NumPy's global random state (so its interval changes
from call to call and it reseeds nothing it does not own), loops over 20,000 resamples in Python, and resamples
only the annotated rows, holding the judged pass rate fixed, which understates the interval when few rows were
judged. Here the bootstrap is seeded, vectorised, and resamples both the annotated and the judged rows; the
tests check the point estimate and, for many judged rows, the interval against judgy's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from workspace.core.versions import Version, get_version
from workspace.errors import ComparisonError, WorkspaceError

__all__ = [
    'Agreement',
    'CorrectedRate',
    'cohen_kappa',
    'agreement_stats',
    'corrected_pass_rate',
    'judge_agreement',
    'wilson',
]

Interval = tuple[float, float, float]


def _binary(values: Sequence[Any] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray([bool(v) if not isinstance(v, str) else v == 'pass' for v in values], dtype=bool)
    if array.ndim != 1:
        raise ComparisonError(f'{name} must be a flat sequence of pass/fail verdicts')
    return array


def cohen_kappa(human: Sequence[Any] | np.ndarray, judge: Sequence[Any] | np.ndarray) -> float:
    """Return Cohen's kappa of two binary raters: (observed - chance agreement) / (1 - chance agreement); NaN
    when chance agreement is 1 (both raters gave one verdict only), as scikit-learn does.

    >>> round(cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]), 3)
    0.5
    """
    h, j = _binary(human, 'human'), _binary(judge, 'judge')
    if len(h) != len(j) or not len(h):
        raise ComparisonError(f'human has {len(h)} verdicts and judge {len(j)}; pass one of each per row, not none')
    observed = float(np.mean(h == j))
    chance = float(h.mean() * j.mean() + (1 - h.mean()) * (1 - j.mean()))
    return float('nan') if chance == 1 else (observed - chance) / (1 - chance)


def wilson(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Return (proportion, low, high): the Wilson score interval from scipy; NaN for n = 0.

    >>> [round(x, 4) for x in wilson(8, 10)]
    [0.8, 0.4902, 0.9433]
    """
    if n == 0:
        return float('nan'), float('nan'), float('nan')
    ci = scipy_stats.binomtest(successes, n).proportion_ci(confidence_level=confidence, method='wilson')
    return successes / n, float(ci.low), float(ci.high)


def _kappa_interval(h: np.ndarray, j: np.ndarray, confidence: float, resamples: int, seed: int) -> Interval:
    """Cohen's kappa with a percentile bootstrap interval over rows (vectorised over resamples)."""
    kappa = cohen_kappa(h, j)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(h), size=(resamples, len(h)))
    hs, js = h[index], j[index]
    observed = (hs == js).mean(axis=1)
    ph, pj = hs.mean(axis=1), js.mean(axis=1)
    chance = ph * pj + (1 - ph) * (1 - pj)
    ok = chance < 1
    draws = (observed[ok] - chance[ok]) / (1 - chance[ok])
    if not len(draws):
        return kappa, float('nan'), float('nan')
    alpha = 1 - confidence
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return kappa, float(low), float(high)


@dataclass(frozen=True)
class CorrectedRate:
    """A judged pass rate corrected for the judge's error rates: the observed rate, the estimate and its interval."""

    observed: float
    estimate: float
    low: float
    high: float
    judged: int
    annotated: int
    confidence: float

    def __str__(self) -> str:
        return (
            f'pass rate {self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}] corrected for the judge '
            f'(judged {self.observed:.3f} on {self.judged} rows; judge checked on {self.annotated} human verdicts)'
        )


def corrected_pass_rate(
    human: Sequence[Any],
    judge_on_annotated: Sequence[Any],
    judged: Sequence[Any],
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> CorrectedRate:
    """Return the pass rate of `judged` (the judge's verdicts on many rows) corrected for the judge's TPR and TNR
    measured on annotated rows (`human` and `judge_on_annotated`, paired), with a bootstrap interval.

    >>> r = corrected_pass_rate([1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1], [1, 0, 1, 1], resamples=2000)
    >>> round(r.estimate, 3)
    0.75
    """
    h, j, u = _binary(human, 'human'), _binary(judge_on_annotated, 'judge_on_annotated'), _binary(judged, 'judged')
    if len(h) != len(j) or not len(h) or not len(u):
        raise ComparisonError('pass paired human and judge verdicts on annotated rows, and the judged rows')
    if h.all() or not h.any():
        raise ComparisonError('the annotated rows need both a pass and a fail from people to measure TPR and TNR')

    def estimate(tpr: Any, tnr: Any, observed: Any) -> Any:
        return np.clip((observed + tnr - 1) / (tpr + tnr - 1), 0, 1)

    tpr, tnr, observed = float(j[h].mean()), float((~j[~h]).mean()), float(u.mean())
    if tpr + tnr <= 1:
        raise ComparisonError(
            f'the judge agrees with people no better than chance (TPR {tpr:.2f} + TNR {tnr:.2f} <= 1): its pass rate '
            'cannot be corrected; improve the judge first'
        )
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(h), size=(resamples, len(h)))
    hs, js = h[a], j[a]
    positives, negatives = hs.sum(axis=1), (~hs).sum(axis=1)
    with np.errstate(invalid='ignore', divide='ignore'):
        tprs = (hs & js).sum(axis=1) / positives
        tnrs = (~hs & ~js).sum(axis=1) / negatives
        observed_draws = u[rng.integers(0, len(u), size=(resamples, len(u)))].mean(axis=1)
        ok = (positives > 0) & (negatives > 0) & (tprs + tnrs > 1)
        draws = estimate(tprs[ok], tnrs[ok], observed_draws[ok])
    alpha = 1 - confidence
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2]) if len(draws) else (float('nan'),) * 2
    return CorrectedRate(
        observed, float(estimate(tpr, tnr, observed)), float(low), float(high), len(u), len(h), confidence
    )


@dataclass(frozen=True)
class Agreement:
    """A judge against people on the same predictions: the 2x2 table, kappa, TPR, TNR and accuracy, each
    `(value, low, high)`; `frame` has one row per annotated prediction."""

    judge_id: str
    n: int
    table: dict[str, int]
    kappa: Interval
    tpr: Interval
    tnr: Interval
    accuracy: Interval
    confidence: float
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def corrected_pass_rate(self, judged: Any, *, resamples: int = 10_000, seed: int = 0) -> CorrectedRate:
        """Return a judged pass rate corrected for this judge's error rates: `judged` is a run (judged with this
        judge through the store) or the judge's pass/fail verdicts on the rows to estimate over.

        >>> print(agreement.corrected_pass_rate(run))
        """
        if hasattr(judged, 'rows') and hasattr(judged, 'run_id'):
            from workspace.core.judges import judge_run

            verdicts = judge_run(judged, self.judge_id)['passed'].dropna().tolist()
        else:
            verdicts = list(judged)
        return corrected_pass_rate(
            self.frame['human'],
            self.frame['judge'],
            verdicts,
            confidence=self.confidence,
            resamples=resamples,
            seed=seed,
        )

    def __str__(self) -> str:
        t = self.table
        lines = [
            f'{self.judge_id} against {self.n} human verdicts (tp {t["tp"]}, fn {t["fn"]}, fp {t["fp"]}, tn {t["tn"]})'
        ]
        for name in ('kappa', 'tpr', 'tnr', 'accuracy'):
            value, low, high = getattr(self, name)
            lines.append(f'  {name:<8} {value:.3f} [{low:.3f}, {high:.3f}]')
        return '\n'.join(lines + [f'note: {n}' for n in self.notes])

    def _repr_html_(self) -> str:
        from workspace.display.results import render_agreement

        return render_agreement(self)


def agreement_stats(
    human: Sequence[Any],
    judge: Sequence[Any],
    *,
    judge_id: str = 'judge',
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
    frame: pd.DataFrame | None = None,
) -> Agreement:
    """Return the agreement of paired binary verdicts (True or 'pass' is a pass): kappa with a bootstrap
    interval, TPR, TNR and accuracy with Wilson intervals."""
    h, j = _binary(human, 'human'), _binary(judge, 'judge')
    if len(h) != len(j) or not len(h):
        raise ComparisonError(f'human has {len(h)} verdicts and judge {len(j)}; pass one of each per row, not none')
    tp, fn = int((h & j).sum()), int((h & ~j).sum())
    fp, tn = int((~h & j).sum()), int((~h & ~j).sum())
    notes = []
    if tp + fn == 0 or fp + tn == 0:
        notes.append('people gave only one verdict here: annotate both passes and fails to measure TPR and TNR')
    if len(h) < 30:
        notes.append(f'only {len(h)} annotated rows: the intervals are wide; annotate more (ws.annotate(run, n=50))')
    if frame is None:
        frame = pd.DataFrame({'human': h, 'judge': j})
    return Agreement(
        judge_id=judge_id,
        n=len(h),
        table={'tp': tp, 'fn': fn, 'fp': fp, 'tn': tn},
        kappa=_kappa_interval(h, j, confidence, resamples, seed),
        tpr=wilson(tp, tp + fn, confidence),
        tnr=wilson(tn, fp + tn, confidence),
        accuracy=wilson(tp + tn, len(h), confidence),
        confidence=confidence,
        frame=frame,
        notes=notes,
    )


def judge_agreement(
    judge: Version | str, annotations: pd.DataFrame | None = None, *, confidence: float = 0.95
) -> Agreement:
    """Judge the predictions people annotated (through the store: judged once, then read back) and return how
    the judge agrees with them: Cohen's kappa, TPR, TNR and accuracy with intervals.

    `annotations` is a frame from `ws.list_annotations(...)` (all annotations when None). A prediction the judge could
    not read (an error, an unparsable answer) is left out and counted in the notes.

    >>> agreement = ws.judge_agreement(ws.correctness_judge(), ws.list_annotations('support_tickets'))
    """
    from workspace.analysis.annotations import list_annotations
    from workspace.core.judges import judge_rows, judge_spec

    j = get_version(judge)
    judge_spec(j)
    people = list_annotations() if annotations is None else annotations
    if people.empty:
        raise WorkspaceError('there are no annotations to check the judge against; make some with ws.annotate(run)')
    parts = []
    for dataset, group in people.groupby('dataset', sort=False):
        rows = group[['version_id', 'example_id', 'prediction', 'request_hash']].to_dict('records')
        judged = judge_rows(j, str(dataset), rows).frame[['version_id', 'example_id', 'passed', 'verdict', 'error']]
        parts.append(group.merge(judged, on=['version_id', 'example_id'], how='left'))
    merged = pd.concat(parts, ignore_index=True)
    readable = merged[merged['passed'].notna()].copy()
    left_out = len(merged) - len(readable)
    if readable.empty:
        raise WorkspaceError(f'judge {j.id} gave no readable verdict on the {len(merged)} annotated predictions')
    readable['human'] = readable['verdict_x'] == 'pass'
    readable['judge'] = readable['passed'].astype(bool)
    readable = readable.rename(columns={'verdict_y': 'judge_verdict', 'verdict_x': 'human_verdict'})
    result = agreement_stats(
        readable['human'],
        readable['judge'],
        judge_id=j.id,
        confidence=confidence,
        frame=readable.reset_index(drop=True),
    )
    if left_out:
        result.notes.append(f'{left_out} annotated predictions got no readable verdict from the judge and are left out')
    return result
