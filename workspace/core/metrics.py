"""Classification metrics and score means: expected labels and predictions (None when unparsed) in, tables out.

A None prediction means the model errored or its output did not parse: it is always wrong, it is not a
prediction of any label, and the confusion matrix gives it a column of its own, `'(none)'`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypedDict

import numpy as np
import pandas as pd

from workspace.errors import ComparisonError

__all__ = [
    'NONE_COLUMN',
    'ClassificationSummary',
    'confusion_matrix',
    'per_category',
    'classification_summary',
    'mean_scores',
    'LABEL_METRICS',
    'encode_labels',
    'label_metric',
    'split_metric',
    'Skew',
    'label_skew',
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


#: Metrics of a whole split of label predictions, by name; each is higher-is-better and in [0, 1].
LABEL_METRICS = ('accuracy', 'macro_f1', 'balanced_accuracy')


def encode_labels(expected: Sequence[str], predicted: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return expected and predicted labels as class indices (-1 for None or a label never expected) and the
    classes (the expected labels, sorted). Metrics over the indices are vectorised over leading axes."""
    classes = sorted(set(expected))
    index = {label: i for i, label in enumerate(classes)}
    truth = np.array([index[e] for e in expected], dtype=np.int64)
    guess = np.array([index.get(p, -1) if p is not None else -1 for p in predicted], dtype=np.int64)
    return truth, guess, classes


def label_metric(name: str, truth: np.ndarray, guess: np.ndarray, n_classes: int) -> np.ndarray:
    """Return a split-level label metric of `guess` against `truth` (shapes (..., n), broadcast), one value per
    leading index: accuracy, macro-F1 (over the expected classes, as `classification_summary`) or balanced
    accuracy (the mean recall over expected classes, as scikit-learn's `balanced_accuracy_score`).

    >>> float(label_metric('balanced_accuracy', np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0]), 2))
    0.5
    """
    if name == 'accuracy':
        return (guess == truth).mean(axis=-1)
    truth, guess = np.broadcast_arrays(truth, guess)
    shape = truth.shape[:-1]
    rows = int(np.prod(shape, dtype=np.int64))

    def counts(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
        # One bincount over every row at once: row r's class c lands in bin r * k + c (O(rows * n), not * k).
        flat = (np.arange(rows)[:, None] * n_classes + labels.reshape(rows, -1))[keep.reshape(rows, -1)]
        return np.bincount(flat, minlength=rows * n_classes).reshape(*shape, n_classes)

    support = counts(truth, np.ones(truth.shape, dtype=bool))
    tp = counts(truth, guess == truth)
    present = support > 0  # classes absent from a (resampled) truth do not count

    def mean_over_present(values: np.ndarray) -> np.ndarray:
        return (values * present).sum(axis=-1) / present.sum(axis=-1)

    if name == 'balanced_accuracy':
        return mean_over_present(np.divide(tp, support, out=np.zeros(tp.shape), where=present))
    if name == 'macro_f1':
        guessed = counts(np.where(guess >= 0, guess, 0), guess >= 0)
        denominator = guessed + support
        return mean_over_present(np.divide(2 * tp, denominator, out=np.zeros(tp.shape), where=denominator > 0))
    raise ComparisonError(f'unknown label metric {name!r}; use one of {", ".join(LABEL_METRICS)}')


def split_metric(name: str, expected: Sequence[str], predicted: Sequence[str | None]) -> float:
    """Return a split-level label metric (`LABEL_METRICS`) of the predictions.

    >>> split_metric('macro_f1', ['a', 'a', 'b'], ['a', 'a', 'a'])
    0.4
    """
    truth, guess, classes = encode_labels(expected, predicted)
    return float(label_metric(name, truth, guess, len(classes)))


class Skew(TypedDict):
    """One label taking most predictions: which, how many of how many, and its share among expected labels."""

    label: str
    predicted: int
    n: int
    expected_share: float
    message: str


def label_skew(
    expected: Sequence[str],
    predicted: Sequence[str | None],
    *,
    share: float = 0.6,
    excess: float = 0.2,
    alpha: float = 0.05,
) -> Skew | None:
    """Return the label that takes at least `share` of the predictions and `excess` more than its share of the
    expected labels (a version collapsing onto one answer, often the majority), or None. On few rows that can
    happen by chance, so it must also be more than the expected share by a one-sided binomial test at `alpha`.

    >>> label_skew(['a'] * 7 + ['b'] * 3, ['a'] * 10)['message']
    'predicts a on 10 of 10 rows; expected share 70%'
    >>> label_skew(['a', 'b', 'c'] * 2, ['a', 'a', 'a', 'a', 'b', 'c']) is None  # 4 of 6 can be chance
    True
    """
    from scipy.stats import binomtest

    counted = [p for p in predicted if p is not None]
    if not counted:
        return None
    top, hits = max(((label, counted.count(label)) for label in sorted(set(counted))), key=lambda item: item[1])
    n = len(predicted)
    expected_share = sum(e == top for e in expected) / len(expected) if expected else 0.0
    if hits / n < share or hits / n < expected_share + excess:
        return None
    if expected_share > 0 and binomtest(hits, n, expected_share, alternative='greater').pvalue >= alpha:
        return None
    message = f'predicts {top} on {hits} of {n} rows; expected share {expected_share:.0%}'
    return Skew(label=top, predicted=hits, n=n, expected_share=expected_share, message=message)
