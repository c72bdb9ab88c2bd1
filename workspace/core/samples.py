"""Samples: k answers to the same request at temperature > 0, and what they say about a version's stability.

Sample 0 is the request itself (its prediction is the evaluation row's), and sample i >= 1 is the same request
with the sample index and seed + i: the index is part of the request identity, so asking for k = 5 after k = 3
makes exactly 2 more calls per row, and asking again makes none.

```
prompt_workspace/samples/<dataset>   one row per (version, example, sample index): request hash, output, prediction
```

Per row: how many samples pass, agreement (the share of samples giving the most common prediction), pass@k
(at least one of k samples passes; Chen et al. 2021's unbiased estimator) and pass^k (all k pass; Yao et al.
2024's tau-bench estimator); a row is unstable when some samples pass and some fail. Per run: the means with
percentile bootstrap intervals over rows (scipy). Scores are computed when read, from the dataset's current
expected outputs, so a corrected expected output counts at once.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from udfs import parse, scores
from workspace.core.versions import Version
from workspace.errors import WorkspaceError
from workspace.storage import store, tables

__all__ = [
    'SampleReport',
    'check_samples',
    'sample_request',
    'sample_rows',
    'sample_report',
    'sample_metrics',
    'pass_at_k',
    'pass_hat_k',
    'PASS_THRESHOLD',
]

#: The per-row score a sample must reach to pass, by task: labels and JSON are right or wrong; text passes at a
#: ROUGE-L of 0.5.
PASS_THRESHOLD = {'choice': 1.0, 'json': 1.0, 'text': 0.5}


def check_samples(version: Version, samples: int) -> None:
    """Raise WorkspaceError unless `samples` is a whole number >= 1 and, above 1, the version samples (temperature
    above 0): k answers at temperature 0 would be k copies of one."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise WorkspaceError(f'samples={samples!r} is not a whole number of at least 1; pass e.g. samples=5')
    if samples > 1 and float(version.params.get('temperature', 0.0)) <= 0:
        raise WorkspaceError(
            f'samples={samples} needs a temperature above 0, and {version.id} decodes at temperature 0; make a '
            f"version that samples: ws.edit({version.id!r}, params={{'temperature': 0.8}})"
        )


def sample_request(request: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Return sample `index` of a request: the request itself for 0, else the same with `sample` = index and the
    seed moved by index (a backend that seeds its sampler would otherwise repeat sample 0)."""
    if index == 0:
        return dict(request)
    body = {k: v for k, v in request.items() if k != 'hash'}
    params = dict(body.get('params') or {})
    params['seed'] = int(params.get('seed', 0)) + index
    body.update(params=params, sample=index)
    body['hash'] = store.request_hash(body)
    return body


def write_samples(
    dataset: str,
    version: Version,
    requests: Mapping[tuple[str, int], Mapping[str, Any]],
    answers: Mapping[str, store.Answer],
) -> None:
    """Store the answers of sample requests, keyed by (example id, sample index)."""
    rows = []
    for (example_id, index), request in requests.items():
        answer = answers[request['hash']]
        rows.append(
            {
                'version_id': version.id,
                'example_id': example_id,
                'sample_index': index,
                'request_hash': request['hash'],
                'output': answer['text'],
                'prediction': parse.parse(answer['text'], dict(version.output)),
                'error': answer['error'],
                'latency_s': answer['latency_s'],
                'prompt_tokens': answer['prompt_tokens'],
                'completion_tokens': answer['completion_tokens'],
                'answered_at': answer['answered_at'],
            }
        )
    if rows:
        tables.upsert(tables.samples(dataset), rows)


def stored_samples(dataset: str, version_id: str) -> dict[tuple[str, int], str]:
    """Return the request hash of each stored sample of a version: (example id, sample index) to hash."""
    t = tables.samples(dataset)
    rows = t.where(t.version_id == version_id).select(t.example_id, t.sample_index, t.request_hash).collect()
    return {(r['example_id'], r['sample_index']): r['request_hash'] for r in rows}


def _row_score(task: str, prediction: str | None, expected: Any, output_spec: Mapping[str, Any]) -> float:
    if task == 'choice':
        return float(scores.exact_match.py_fn(prediction, expected))
    if task == 'json':
        return float(scores.json_valid.py_fn(prediction, output_spec.get('schema')))
    return float(scores.rouge_l.py_fn(prediction, expected))


def sample_rows(run: Any, k: int | None = None) -> pd.DataFrame:
    """Return one row per (example, sample) of a run, for the first k samples (all the run asked for by
    default): prediction, raw output, error, tokens, and its score against the run's expected output."""
    k = run.samples if k is None else k
    if k < 1 or k > run.samples:
        raise WorkspaceError(f'k={k} is outside 1..{run.samples}, the samples this run asked for')
    t = run.pinned('samples')  # as the run made them: a later run with more samples adds rows, never changes these
    frame = t.where((t.version_id == run.version.id) & (t.sample_index < k)).collect().to_pandas()
    frame = frame[frame['example_id'].isin(set(run.example_ids))]
    if len(frame) < k * run.n:
        raise WorkspaceError(
            f'{run.version.id} has {len(frame)} of {k * run.n} samples of this run stored; evaluate it again with '
            f'samples={k}'
        )
    from workspace.core.datasets import get_dataset

    ds = get_dataset(run.dataset)
    rows = run.rows()
    expected = dict(zip(rows['example_id'], rows['expected']))  # the run's own expected outputs
    frame = frame.sort_values(['example_id', 'sample_index']).reset_index(drop=True)
    frame['expected'] = [expected.get(ex) for ex in frame['example_id']]
    frame['score'] = [
        _row_score(ds.task, None if pd.isna(p) else p, e, run.version.output)
        for p, e in zip(frame['prediction'], frame['expected'])
    ]
    frame['passed'] = frame['score'] >= PASS_THRESHOLD[ds.task]
    return frame


def pass_at_k(n: int, c: int, k: int) -> float:
    """Return the chance that at least one of k samples drawn from n (c of them passing) passes: 1 - C(n-c, k) /
    C(n, k), the unbiased estimator of Chen et al. (2021).

    >>> pass_at_k(5, 1, 5), pass_at_k(5, 0, 3), round(pass_at_k(4, 2, 2), 4)
    (1.0, 0.0, 0.8333)
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise WorkspaceError(f'pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}')
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_hat_k(n: int, c: int, k: int) -> float:
    """Return the chance that all of k samples drawn from n (c of them passing) pass: C(c, k) / C(n, k), the
    pass^k of Yao et al. (2024), which falls with k where pass@k rises.

    >>> pass_hat_k(5, 5, 5), pass_hat_k(5, 4, 5), round(pass_hat_k(4, 2, 2), 4)
    (1.0, 0.0, 0.1667)
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise WorkspaceError(f'pass_hat_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}')
    return math.comb(c, k) / math.comb(n, k)


def _interval(values: Sequence[float], confidence: float) -> tuple[float, float, float]:
    array = np.asarray(values, dtype=float)
    mean = float(array.mean())
    if len(array) < 2 or np.all(array == array[0]):
        return mean, mean, mean
    from scipy import stats as scipy_stats  # scipy.stats costs 0.6 s to import; only sampled runs need it

    result = scipy_stats.bootstrap(
        (array,), np.mean, confidence_level=confidence, method='percentile', n_resamples=2000, random_state=0
    )
    return mean, float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclass(frozen=True)
class SampleReport:
    """A run's samples: per row (passing samples, agreement, pass@k, pass^k, unstable) and per run, with
    intervals."""

    run_id: str
    version_id: str
    k: int
    rows: pd.DataFrame
    metrics: dict[str, tuple[float, float, float]]
    confidence: float = 0.95
    notes: list[str] = field(default_factory=list)

    @property
    def unstable(self) -> list[str]:
        """Return the ids of the examples on which some samples pass and some fail."""
        return list(self.rows.loc[self.rows['unstable'], 'example_id'])

    def _lines(self) -> list[tuple[str, str]]:
        return [(name, f'{v:.3f} [{lo:.3f}, {hi:.3f}]') for name, (v, lo, hi) in self.metrics.items()]

    def __str__(self) -> str:
        head = f'{self.version_id}: {self.k} samples per row, {len(self.rows)} rows, {len(self.unstable)} unstable'
        width = max(len(n) for n, _ in self._lines())
        body = [f'  {n:<{width}}  {v}' for n, v in self._lines()]
        tail = [f'unstable rows: {", ".join(self.unstable[:20])}'] if self.unstable else []
        return '\n'.join([head, *body, *tail, *[f'note: {n}' for n in self.notes]])

    def _repr_html_(self) -> str:
        from workspace.display.results import render_sample_report

        return render_sample_report(self)


def sample_report(run: Any, k: int | None = None, *, confidence: float = 0.95) -> SampleReport:
    """Return a run's per-row agreement, pass@k and pass^k (k defaults to the samples the run asked for), with
    percentile bootstrap intervals over rows, and the unstable rows (some samples pass, some fail).

    >>> run = ws.evaluate(v_sampling, tickets, 'dev', samples=5)
    >>> print(ws.sample_report(run))
    """
    frame = sample_rows(run)
    n = run.samples
    k = n if k is None else k
    if not 1 <= k <= n:
        raise WorkspaceError(f'k={k} is outside 1..{n}, the samples this run asked for')
    rows = []
    for example_id, group in frame.groupby('example_id', sort=False):
        c = int(group['passed'].sum())
        counts = Counter('\0' if pd.isna(p) else str(p) for p in group['prediction'])
        modal, modal_count = counts.most_common(1)[0]
        rows.append(
            {
                'example_id': example_id,
                'samples': len(group),
                'passed': c,
                'agreement': modal_count / len(group),
                'modal_prediction': None if modal == '\0' else modal,
                'distinct': len(counts),
                'pass@1': c / len(group),
                f'pass@{k}': pass_at_k(len(group), c, k),
                f'pass^{k}': pass_hat_k(len(group), c, k),
                'unstable': 0 < c < len(group),
            }
        )
    table = pd.DataFrame(rows)
    order = {ex: i for i, ex in enumerate(run.example_ids)}
    table = table.sort_values('example_id', key=lambda s: s.map(order)).reset_index(drop=True)
    metrics = {
        name: _interval(table[name].tolist(), confidence) for name in ('pass@1', f'pass@{k}', f'pass^{k}', 'agreement')
    }
    notes = []
    if run.task == 'text':
        notes.append(f'a text sample passes at ROUGE-L >= {PASS_THRESHOLD["text"]}')
    return SampleReport(run.run_id, run.version.id, k, table, metrics, confidence, notes)


def sample_metrics(run: Any) -> dict[str, float]:
    """Return the summary figures of a run with samples: pass@1, pass@k, pass^k, agreement and unstable rows."""
    report = sample_report(run)
    values: dict[str, float] = {name: value for name, (value, _, _) in report.metrics.items()}
    values['unstable_rows'] = len(report.unstable)
    return values
