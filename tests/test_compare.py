"""Comparing versions: the metrics table with paired intervals, flips, significance, and clear errors."""

from __future__ import annotations

import pytest

from workspace import errors
from workspace.analysis.compare import build_comparison, compare_table, flips, significance
from workspace.core import metrics, stats


def test_compare_table_differences_and_intervals(scripted_versions):
    tiny, v1, v2, v3, server = scripted_versions
    table = compare_table(tiny, [v1, v2], 'dev')
    assert list(table.index) == [v1.id, v2.id]
    assert table.loc[v1.id, 'accuracy'] == pytest.approx(2 / 6)
    assert table.loc[v2.id, 'accuracy'] == 1.0
    row = table.loc[v2.id]
    assert row['diff'] == pytest.approx(4 / 6)
    assert row['ci_low'] <= row['diff'] <= row['ci_high']
    assert row['p_value'] == pytest.approx(0.125)  # McNemar exact: 4 discordant pairs, all in v2's favour
    assert row['verdict'].startswith(
        f'no detectable difference between {v2.id} and {v1.id} on dev at n = 6 (+66.7 points'
    )
    assert table.loc[v1.id, 'verdict'] == 'baseline'
    assert row['calls'] == 6 and row['reused'] == 0 and row['errors'] == 0
    assert table.loc[v2.id, 'macro_f1'] == 1.0


def test_comparison_evaluates_incrementally(scripted_versions):
    tiny, v1, v2, v3, server = scripted_versions
    first = build_comparison(tiny, [v1, v2], 'dev')
    assert [r.calls for r in first.runs] == [6, 6]
    again = build_comparison(tiny, [v1, v2], 'dev')
    assert [r.calls for r in again.runs] == [0, 0] and len(server.received) == 12


def test_flips_and_significance(scripted_versions):
    import workspace as ws

    tiny, v1, v2, v3, _ = scripted_versions
    run1, run2 = ws.evaluate(v1, tiny, 'dev', progress=False), ws.evaluate(v2, tiny, 'dev', progress=False)
    frame = flips(run1, run2)
    assert frame['change'].value_counts().to_dict() == {'fixed': 4, 'same': 2}
    assert set(frame.loc[frame['change'] == 'same', 'expected']) == {'BILLING'}
    assert set(frame.columns) >= {
        'example_id',
        'text',
        'expected',
        'prediction_a',
        'prediction_b',
        'score_a',
        'score_b',
        'error_a',
        'error_b',
    }
    back = flips(run2, run1)
    assert back['change'].value_counts().to_dict() == {'broken': 4, 'same': 2}
    result = significance(run1, run2)
    reference = stats.compare_scores([1, 1, 0, 0, 0, 0], [1] * 6, name_a=v1.id, name_b=v2.id, split='dev')
    assert (result.diff, result.p_value, result.verdict) == (reference.diff, reference.p_value, reference.verdict)


def test_rows_with_errors_are_shown_and_counted(scripted_versions):
    import workspace as ws

    tiny, v1, v2, v3, _ = scripted_versions
    cmp = build_comparison(tiny, [v2, v3], 'dev')
    assert cmp.table.loc[v3.id, 'errors'] == 1
    assert cmp.table.loc[v3.id, 'accuracy'] == pytest.approx(5 / 6)  # the failed row counts as wrong
    assert any('has 1 rows with a model error' in note for note in cmp.notes)
    frame = cmp.flips(v3.id)
    broken = frame[frame['change'] == 'broken']
    assert list(broken['example_id']) == ['a5'] and broken['error_b'].iloc[0].startswith('BackendError')
    assert len(frame) == 6  # not silently dropped
    assert ws.evaluate(v3, tiny, 'dev', progress=False).errors == 1


def test_different_splits_or_datasets_are_refused(scripted_versions):
    import workspace as ws

    tiny, v1, v2, v3, _ = scripted_versions
    dev, train = ws.evaluate(v1, tiny, 'dev', progress=False), ws.evaluate(v2, tiny, 'train', progress=False)
    with pytest.raises(
        errors.ComparisonError, match=r'evaluated on tiny/dev and router:v2 on tiny/train; compare runs of'
    ):
        flips(dev, train)
    with pytest.raises(errors.ComparisonError, match=r'give the versions to compare'):
        build_comparison(tiny, [], 'dev')
    with pytest.raises(errors.LabelError, match=r'router@nope does not exist'):
        build_comparison(tiny, ['router@nope', v2], 'dev')
    with pytest.raises(errors.ComparisonError, match=r"baseline 'router:v3' is not among the compared versions"):
        build_comparison(tiny, [v1, v2], 'dev', baseline=v3)


def test_runs_over_different_rows_compare_on_the_common_ones(scripted_versions):
    import workspace as ws

    tiny, v1, v2, v3, _ = scripted_versions
    before = ws.evaluate(v1, tiny, 'dev', progress=False)
    tiny.append([{'id': 'c1', 'text': 'Refund the extra charge.', 'category': 'BILLING', 'split': 'dev'}])
    after = ws.evaluate(v2, tiny, 'dev', progress=False)
    frame = flips(before, after)
    assert len(frame) == 6 and 'c1' not in set(frame['example_id'])
    from workspace.analysis.compare import _check_same_examples

    _, notes = _check_same_examples(before, after)
    assert notes == [
        "compared on the 6 examples both runs cover (0 only in router:v1's run, 1 only in "
        "router:v2's); evaluate both again to cover all rows"
    ]


def test_macro_f1_bootstrap_matches_the_point_estimate():
    expected = ['a', 'a', 'b', 'b', 'c', 'c', 'a', 'b']
    pred_a = ['a', 'b', 'b', 'b', 'a', None, 'a', 'c']
    pred_b = ['a', 'a', 'b', 'c', 'c', 'c', 'a', 'b']
    diff, low, high = stats.macro_f1_diff_ci(expected, pred_a, pred_b, confidence=0.95, resamples=500, seed=1)
    truth = (
        metrics.classification_summary(expected, pred_b)['macro_f1']
        - metrics.classification_summary(expected, pred_a)['macro_f1']
    )
    assert diff == pytest.approx(truth)
    assert low <= diff <= high and low < high
    same = stats.macro_f1_diff_ci(expected, pred_a, pred_a, confidence=0.95, resamples=200, seed=1)
    assert same == (0.0, 0.0, 0.0)


def test_a_version_given_twice_is_compared_once(scripted_versions):
    tiny, v1, v2, v3, _ = scripted_versions
    alone = build_comparison(tiny, [v1, v1.id], 'dev')  # e.g. an optimizer that kept its baseline
    assert alone.version_ids == [v1.id] and alone.pairwise == {}
    assert alone.notes[-2:] == [
        'router:v1 given more than once: compared once',
        'only router:v1 to show: give another version to compare it with',
    ]
    assert list(alone.table.index) == [v1.id] and alone.table.loc[v1.id, 'verdict'] == 'baseline'


def test_a_version_answering_one_label_is_named_in_a_warning_and_headlines_carry_intervals(scripted_versions):
    tiny, v1, v2, v3, server = scripted_versions
    cmp = build_comparison(tiny, [v1, v2], 'dev')
    assert (
        f'{v1.id} predicts BILLING on 6 of 6 rows; expected share 33%: it may have collapsed onto one answer'
        in cmp.notes
    )
    assert not any(n.startswith(v2.id) for n in cmp.notes)
    table = cmp.table
    low, high = table.loc[v1.id, ['accuracy_low', 'accuracy_high']]
    assert table.loc[v1.id, 'accuracy'] == pytest.approx(2 / 6)
    assert (low, high) == pytest.approx((0.0968, 0.7000), abs=1e-3)  # the Wilson interval of 2 of 6
    from workspace.core.evaluate import evaluate

    summary = evaluate(v1, tiny, 'dev', progress=False).summary()
    assert summary.skew['label'] == 'BILLING' and 'expected share 33%' in ' '.join(summary.notes)
    assert '33.3% (95% CI 9.7% to 70.0%)' in str(summary)


def test_promotion_names_the_metric_it_decided_by(scripted_versions):
    """The promotion message names its metric; with the optimizer's metric (macro-F1) it reads like the
    optimizer's test sentence, so the two never disagree about what was measured."""
    from workspace.analysis.compare import promote_if_better
    from workspace.core.labels import set_label

    tiny, v1, v2, v3, server = scripted_versions
    set_label(v1, 'production')
    by_accuracy = promote_if_better(v2, 'production', dataset=tiny, split='dev')
    assert by_accuracy.metric == 'accuracy' and str(by_accuracy).startswith(
        'kept production on router:v1 (decided by accuracy): '
    )
    by_f1 = promote_if_better(v2, 'production', dataset=tiny, split='dev', metric='macro_f1')
    assert by_f1.metric == 'macro_f1' and '(decided by macro_f1)' in str(by_f1)
    assert 'on dev: macro_f1 1.000 vs 0.' in by_f1.verdict and 'points, 95% CI' in by_f1.verdict
    assert 'promotion' in by_f1._repr_html_().lower()
    with pytest.raises(errors.ComparisonError, match=r"metric 'rouge_l' cannot decide a promotion; use 'accuracy'"):
        promote_if_better(v2, 'production', dataset=tiny, split='dev', metric='rouge_l')
