"""Classification metrics and score means: expected labels and predictions (None when unparsed) in, tables out.

A None prediction means the model errored or its output did not parse: it is always wrong, it is not a
prediction of any label, and the confusion matrix gives it a column of its own, `'(none)'`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypedDict

import numpy as np
import pandas as pd

from .errors import ComparisonError

__all__ = [
    'NONE_COLUMN',
    'ClassificationSummary',
    'confusion_matrix',
    'per_category',
    'classification_summary',
    'mean_scores',
]

#: The confusion-matrix column counting None predictions.
NONE_COLUMN = '(none)'


class ClassificationSummary(TypedDict):
    """Headline numbers of one classification run."""

    n: int
    accuracy: float
    macro_f1: float
    unparsed: int


def _labels(expected: Sequence[str], predicted: Sequence[str | None], labels: Sequence[str] | None) -> list[str]:
    """Check the inputs line up and return the label order: `labels` as given, else the sorted union."""
    if len(expected) != len(predicted):
        raise ComparisonError(
            f'expected has {len(expected)} labels but predicted has {len(predicted)}; '
            'pass one prediction per example, None where the output did not parse'
        )
    for i, label in enumerate(expected):
        if label is None:
            raise ComparisonError(f'expected[{i}] is None; drop examples that have no expected label')
    if labels is None:
        return sorted({*expected, *(p for p in predicted if p is not None)})
    order = list(labels)
    if len(set(order)) != len(order):
        raise ComparisonError(f'labels {order!r} repeat a label; pass each label once')
    known = set(order)
    for name, values in (('expected', expected), ('predicted', predicted)):
        for value in values:
            if value is not None and value not in known:
                raise ComparisonError(
                    f'{name} label {value!r} is not in labels {order!r}; add it to labels, or leave labels=None'
                )
    return order


def confusion_matrix(
    expected: Sequence[str], predicted: Sequence[str | None], labels: Sequence[str] | None = None
) -> pd.DataFrame:
    """Count examples by expected label (rows) and predicted label (columns), None predictions in `'(none)'` last.

    >>> confusion_matrix(['a', 'a', 'b'], ['a', 'b', None])
    predicted  a  b  (none)
    expected
    a          1  1       0
    b          0  0       1
    """
    order = _labels(expected, predicted, labels)
    columns = order + ([NONE_COLUMN] if any(p is None for p in predicted) else [])
    row_of = {label: i for i, label in enumerate(order)}
    column_of = {label: i for i, label in enumerate(columns)}
    counts = np.zeros((len(order), len(columns)), dtype=np.int64)
    for truth, guess in zip(expected, predicted):
        counts[row_of[truth], column_of[NONE_COLUMN if guess is None else guess]] += 1
    return pd.DataFrame(
        counts,
        index=pd.Index(order, name='expected'),
        columns=pd.Index(columns, name='predicted'),
    )


def per_category(
    expected: Sequence[str], predicted: Sequence[str | None], labels: Sequence[str] | None = None
) -> pd.DataFrame:
    """Return precision, recall, F1 and support per label, 0.0 where a ratio has nothing to divide by.

    Matches scikit-learn's `precision_recall_fscore_support(zero_division=0)`; support counts expected labels.

    >>> per_category(['a', 'a', 'b'], ['a', 'b', None])
           precision  recall        f1  support
    label
    a            1.0     0.5  0.666667        2
    b            0.0     0.0  0.000000        1
    """
    matrix = confusion_matrix(expected, predicted, labels)
    order = list(matrix.index)
    counts = matrix.to_numpy()
    hits = np.diag(counts[:, : len(order)]).astype(float)
    guessed = counts[:, : len(order)].sum(axis=0).astype(float)
    support = counts.sum(axis=1)

    def ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        return np.divide(top, bottom, out=np.zeros_like(top), where=bottom > 0)

    # F1 as 2tp / (2tp + fp + fn) equals the harmonic mean where that is defined and is 0.0 where it is not.
    return pd.DataFrame(
        {
            'precision': ratio(hits, guessed),
            'recall': ratio(hits, support.astype(float)),
            'f1': ratio(2 * hits, guessed + support),
            'support': support,
        },
        index=pd.Index(order, name='label'),
    )


def classification_summary(
    expected: Sequence[str], predicted: Sequence[str | None], labels: Sequence[str] | None = None
) -> ClassificationSummary:
    """Return n, accuracy, macro F1 and the count of unparsed (None) predictions.

    Macro F1 is the mean F1 over the labels that occur in `expected` only. scikit-learn's macro average also
    counts labels that were only predicted (each with F1 0.0), so a model that invents a rare label would be
    penalised twice; here the wrong predictions already lower the precision and F1 of the labels they took.

    >>> classification_summary(['a', 'a', 'b'], ['a', 'b', None])
    {'n': 3, 'accuracy': 0.3333333333333333, 'macro_f1': 0.3333333333333333, 'unparsed': 1}
    """
    table = per_category(expected, predicted, labels)
    if len(expected) == 0:
        raise ComparisonError('expected and predicted are empty; summarise a run with at least one example')
    correct = sum(truth == guess for truth, guess in zip(expected, predicted))
    return ClassificationSummary(
        n=len(expected),
        accuracy=correct / len(expected),
        macro_f1=float(table.loc[table['support'] > 0, 'f1'].mean()),
        unparsed=sum(guess is None for guess in predicted),
    )


def mean_scores(rows: Sequence[Mapping[str, float | None]], names: Sequence[str]) -> dict[str, float]:
    """Return the mean of each named score over the rows, counting a None score (a failed row) as 0.0.

    >>> mean_scores([{'exact': 1.0, 'rouge1': 0.5}, {'exact': None, 'rouge1': 1.0}], ['exact', 'rouge1'])
    {'exact': 0.5, 'rouge1': 0.75}
    """
    if len(rows) == 0:
        raise ComparisonError('rows is empty; average scores over at least one row')
    totals = dict.fromkeys(names, 0.0)
    for i, row in enumerate(rows):
        for name in names:
            if name not in row:
                raise ComparisonError(f'row {i} has no score {name!r}; it has {sorted(row)!r}, check names')
            value = row[name]
            totals[name] += 0.0 if value is None else float(value)
    return {name: total / len(rows) for name, total in totals.items()}
