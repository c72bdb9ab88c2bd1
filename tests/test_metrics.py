"""Tests for workspace.core.metrics against small hand-counted tables."""

from __future__ import annotations

import doctest

import pandas as pd
import pytest

from workspace.core import metrics
from workspace.core.metrics import classification_summary, confusion_matrix, mean_scores, per_category
from workspace.errors import ComparisonError

# Three labels; 'spam' is expected once but never predicted, one prediction did not parse.
EXPECTED = ['bug', 'bug', 'bug', 'billing', 'billing', 'spam']
PREDICTED = ['bug', 'bug', 'billing', 'billing', None, 'bug']


def frame(rows: dict[str, list[int]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        list(rows.values()),
        index=pd.Index(list(rows), name='expected'),
        columns=pd.Index(columns, name='predicted'),
    ).astype('int64')


def categories(rows: dict[str, tuple[float, float, float, int]]) -> pd.DataFrame:
    table = pd.DataFrame(
        [row[:3] for row in rows.values()],
        index=pd.Index(list(rows), name='label'),
        columns=['precision', 'recall', 'f1'],
    )
    table['support'] = pd.Series([row[3] for row in rows.values()], index=table.index, dtype='int64')
    return table


def test_docstring_examples_run() -> None:
    result = doctest.testmod(metrics, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_confusion_matrix_mixed_case() -> None:
    expected = frame(
        {'billing': [1, 0, 0, 1], 'bug': [1, 2, 0, 0], 'spam': [0, 1, 0, 0]},
        ['billing', 'bug', 'spam', '(none)'],
    )
    pd.testing.assert_frame_equal(confusion_matrix(EXPECTED, PREDICTED), expected)


def test_confusion_matrix_without_none_has_no_none_column() -> None:
    table = confusion_matrix(['a', 'b'], ['b', 'b'])
    pd.testing.assert_frame_equal(table, frame({'a': [0, 1], 'b': [0, 1]}, ['a', 'b']))


def test_confusion_matrix_follows_given_labels_and_keeps_unused_ones() -> None:
    table = confusion_matrix(['a', 'b'], ['a', None], labels=['b', 'a', 'c'])
    expected = frame({'b': [0, 0, 0, 1], 'a': [0, 1, 0, 0], 'c': [0, 0, 0, 0]}, ['b', 'a', 'c', '(none)'])
    pd.testing.assert_frame_equal(table, expected)


def test_per_category_mixed_case() -> None:
    # billing: tp 1, predicted 2, expected 2 -> P 1/2, R 1/2, F1 1/2
    # bug:     tp 2, predicted 3, expected 3 -> P 2/3, R 2/3, F1 2/3
    # spam:    never predicted, expected 1   -> P 0 (zero division), R 0, F1 0
    expected = categories({'billing': (0.5, 0.5, 0.5, 2), 'bug': (2 / 3, 2 / 3, 2 / 3, 3), 'spam': (0.0, 0.0, 0.0, 1)})
    pd.testing.assert_frame_equal(per_category(EXPECTED, PREDICTED), expected)


def test_per_category_all_correct() -> None:
    expected = categories({'a': (1.0, 1.0, 1.0, 2), 'b': (1.0, 1.0, 1.0, 1)})
    pd.testing.assert_frame_equal(per_category(['a', 'b', 'a'], ['a', 'b', 'a']), expected)


def test_per_category_all_wrong() -> None:
    expected = categories({'a': (0.0, 0.0, 0.0, 2), 'b': (0.0, 0.0, 0.0, 1)})
    pd.testing.assert_frame_equal(per_category(['a', 'b', 'a'], ['b', 'a', 'b']), expected)


def test_per_category_only_predicted_label_has_zero_support() -> None:
    # 'c' is predicted once but never expected: P 0/1, R 0/0 -> 0 (zero division), support 0.
    expected = categories({'a': (1.0, 0.5, 2 / 3, 2), 'c': (0.0, 0.0, 0.0, 0)})
    pd.testing.assert_frame_equal(per_category(['a', 'a'], ['a', 'c']), expected)


def test_per_category_none_prediction_is_wrong_but_predicts_nothing() -> None:
    # a: tp 1 of 1 prediction (precision 1.0), 1 of 2 expected (recall 0.5).
    expected = categories({'a': (1.0, 0.5, 2 / 3, 2)})
    pd.testing.assert_frame_equal(per_category(['a', 'a'], ['a', None]), expected)


def summary(n: int, accuracy: float, macro_f1: float, unparsed: int) -> dict[str, float]:
    return {'n': n, 'accuracy': accuracy, 'macro_f1': macro_f1, 'unparsed': unparsed}


@pytest.mark.parametrize(
    ('expected', 'predicted', 'numbers'),
    [
        pytest.param(EXPECTED, PREDICTED, summary(6, 3 / 6, (1 / 2 + 2 / 3 + 0) / 3, 1), id='mixed'),
        pytest.param(['a', 'b', 'a'], ['a', 'b', 'a'], summary(3, 1.0, 1.0, 0), id='all-correct'),
        pytest.param(['a', 'b', 'a'], ['b', 'a', 'b'], summary(3, 0.0, 0.0, 0), id='all-wrong'),
        pytest.param(['a', 'b'], [None, None], summary(2, 0.0, 0.0, 2), id='all-none'),
        pytest.param(['a'], ['a'], summary(1, 1.0, 1.0, 0), id='single-right'),
        pytest.param(['a'], ['b'], summary(1, 0.0, 0.0, 0), id='single-wrong'),
        # 'c' is only predicted: macro F1 averages over 'a' alone (F1 2/3); sklearn would average 2/3 and 0.
        pytest.param(['a', 'a'], ['a', 'c'], summary(2, 0.5, 2 / 3, 0), id='predicted-only'),
    ],
)
def test_classification_summary(expected: list[str], predicted: list[str | None], numbers: dict[str, float]) -> None:
    assert classification_summary(expected, predicted) == pytest.approx(numbers)


def test_classification_summary_given_labels_do_not_change_macro_f1() -> None:
    assert classification_summary(['a', 'a'], ['a', 'c'], labels=['a', 'c', 'z'])['macro_f1'] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ('call', 'message'),
    [
        (lambda: confusion_matrix(['a', 'b'], ['a']), 'expected has 2 labels but predicted has 1'),
        (lambda: per_category(['a', None], ['a', 'a']), r'expected\[1\] is None'),  # type: ignore[list-item]
        (lambda: confusion_matrix(['a'], ['x'], labels=['a']), "predicted label 'x' is not in labels"),
        (lambda: confusion_matrix(['a'], ['a'], labels=['a', 'a']), 'repeat a label'),
        (lambda: classification_summary([], []), 'at least one example'),
    ],
)
def test_bad_input_raises_comparison_error(call: object, message: str) -> None:
    with pytest.raises(ComparisonError, match=message):
        call()  # type: ignore[operator]


def test_mean_scores_counts_none_as_zero() -> None:
    rows = [{'exact': 1.0, 'rouge1': 0.5}, {'exact': None, 'rouge1': 0.25}, {'exact': 1.0, 'rouge1': None}]
    assert mean_scores(rows, ['exact', 'rouge1']) == pytest.approx({'exact': 2 / 3, 'rouge1': 0.25})


def test_mean_scores_single_row_and_subset_of_names() -> None:
    assert mean_scores([{'exact': 0.0, 'bleu': 0.4}], ['bleu']) == {'bleu': 0.4}


def test_mean_scores_rejects_missing_name_and_no_rows() -> None:
    with pytest.raises(ComparisonError, match="row 1 has no score 'exact'"):
        mean_scores([{'exact': 1.0}, {'bleu': 1.0}], ['exact'])
    with pytest.raises(ComparisonError, match='rows is empty'):
        mean_scores([], ['exact'])
