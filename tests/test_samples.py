"""Samples with the real embedded model: k answers per request, the sample index in the request identity (k = 5
after k = 3 makes 2 more calls per row, a re-run none), and pass@k, pass^k and agreement checked against brute
force."""

from __future__ import annotations

import itertools

import pytest
from conftest import model_calls

from workspace.core.samples import sample_report

LABELS = ['BILLING', 'DELIVERY', 'TECHNICAL']


def test_samples_call_counts_and_report(ws, tiny, local):
    v1 = ws.create_version('router', template='Ticket: {{ text }}\nCategory:', output=ws.choice(LABELS))
    with pytest.raises(ws.WorkspaceError, match=r"samples=3 needs a temperature above 0.*ws.edit\('router:v1'"):
        ws.evaluate(v1, tiny, 'dev', samples=3, progress=False)
    with pytest.raises(ws.WorkspaceError, match=r'samples=0 is not a whole number'):
        ws.evaluate(v1, tiny, 'dev', samples=0, progress=False)
    hot = ws.edit(v1, params={'temperature': 1.5, 'top_p': 1.0})

    run3, calls = model_calls(local, lambda: ws.evaluate(hot, tiny, 'dev', samples=3, progress=False))
    assert calls == run3.calls == 6 * 3 and run3.samples == 3
    run5, calls = model_calls(local, lambda: ws.evaluate(hot, tiny, 'dev', samples=5, progress=False))
    assert calls == run5.calls == 6 * 2
    again, calls = model_calls(local, lambda: ws.evaluate(hot, tiny, 'dev', samples=5, progress=False))
    assert calls == again.calls == 0
    fewer, calls = model_calls(local, lambda: ws.evaluate(hot, tiny, 'dev', samples=3, progress=False))
    assert calls == 0
    plain, calls = model_calls(local, lambda: ws.evaluate(hot, tiny, 'dev', progress=False))
    assert calls == 0  # sample 0 is the request itself

    rows = run5.sample_rows()
    assert len(rows) == 30 and sorted(set(rows['sample_index'])) == [0, 1, 2, 3, 4]
    assert rows['request_hash'].nunique() == 30 and set(rows['prediction'].dropna()) <= set(LABELS)
    first = rows[rows['sample_index'] == 0].set_index('example_id')['prediction']
    assert (first == plain.predictions().set_index('example_id')['prediction']).all()

    report = sample_report(run5)
    assert report.k == 5 and len(report.rows) == 6
    for _, row in report.rows.iterrows():
        assert row['pass@5'] >= row['pass@1'] >= row['pass^5']
        assert row['unstable'] == (0 < row['passed'] < 5)
        assert 1 / 5 <= row['agreement'] <= 1
    for name, (value, low, high) in report.metrics.items():
        assert low <= value <= high, name
    assert report.metrics['pass@1'][0] == pytest.approx(rows['passed'].mean())
    assert set(report.unstable) == set(report.rows.loc[report.rows['unstable'], 'example_id'])
    assert 'pass^5' in str(report) and 'pw-samples' in report._repr_html_()
    summary = run5.summary().metrics
    assert summary['pass@5'] == report.metrics['pass@5'][0] and summary['unstable_rows'] == len(report.unstable)
    assert summary['cost_usd'] == 0.0  # the embedded model costs nothing
    assert ws.get_run(run5.run_id).samples == 5
    smaller = sample_report(fewer)
    assert smaller.k == 3 and len(fewer.sample_rows()) == 18


def _brute(outcomes: tuple[int, ...], k: int) -> tuple[float, float]:
    """pass@k and pass^k by enumerating every k-subset of the samples."""
    subsets = list(itertools.combinations(outcomes, k))
    return (
        sum(any(s) for s in subsets) / len(subsets),
        sum(all(s) for s in subsets) / len(subsets),
    )


@pytest.mark.parametrize(
    'outcomes, k',
    [
        ((1, 0, 0, 0, 0), 1),
        ((1, 0, 0, 0, 0), 3),
        ((1, 1, 0, 1, 0), 2),
        ((1, 1, 1, 1, 1), 5),
        ((0, 0, 0), 2),
        ((1, 1, 1, 0), 4),
        ((1, 0, 1, 0, 1, 1, 0, 1), 3),
    ],
)
def test_pass_at_k_and_pass_hat_k_match_enumeration(outcomes, k):
    from workspace.core.samples import pass_at_k, pass_hat_k

    at, hat = _brute(outcomes, k)
    assert pass_at_k(len(outcomes), sum(outcomes), k) == pytest.approx(at)
    assert pass_hat_k(len(outcomes), sum(outcomes), k) == pytest.approx(hat)
