"""Scorers against their reference libraries (rouge-score, sacrebleu, jsonschema), and as computed columns."""

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from udfs import scores
from udfs.scores import (
    DEFAULT_SCORERS,
    SCORERS,
    bleu,
    chrf,
    exact_match,
    get_scorer,
    json_valid,
    normalized_match,
    regex_match,
    rouge1,
    rouge2,
    rouge_l,
)

# (prediction, expected) pairs a summarization or QA run produces; lists are several references.
TEXT_CASES: list[tuple[str, Any]] = [
    ('The customer was charged twice and wants a refund.', 'Customer double-charged; requests a refund.'),
    ('The customer cannot log in after the password reset.', 'User unable to log in after resetting password.'),
    ('Shipping was late.', 'The package arrived two weeks after the promised date.'),
    ('the cat sat on the mat', ['the cat sat on a mat', 'a cat was sitting on the mat']),
    (
        'App crashes when uploading photos.',
        ['The app crashes on photo upload.', 'Uploading a photo makes the app crash.', 'Crash on upload.'],
    ),
    ('Completely unrelated words here', ['nothing in common', 'zero overlap at all']),
]


def _refs(expected: Any) -> list[str]:
    return [expected] if isinstance(expected, str) else expected


def _rouge_reference(rouge_type: str) -> Callable[[str, Any], float]:
    scorer = rouge_scorer.RougeScorer([rouge_type], use_stemmer=True)
    return lambda prediction, expected: max(
        scorer.score(ref, prediction)[rouge_type].fmeasure for ref in _refs(expected)
    )


REFERENCES: list[tuple[Any, Callable[[str, Any], float]]] = [
    (rouge1, _rouge_reference('rouge1')),
    (rouge2, _rouge_reference('rouge2')),
    (rouge_l, _rouge_reference('rougeL')),
    (bleu, lambda prediction, expected: sacrebleu.sentence_bleu(prediction, _refs(expected)).score / 100),
    (chrf, lambda prediction, expected: sacrebleu.sentence_chrf(prediction, _refs(expected)).score / 100),
]

EXPECTED_SCORERS = [name for name, info in SCORERS.items() if info.uses_expected]


@pytest.mark.parametrize('udf, reference', REFERENCES, ids=[udf.name for udf, _ in REFERENCES])
@pytest.mark.parametrize('prediction, expected', TEXT_CASES)
def test_matches_reference_library(udf: Any, reference: Callable[[str, Any], float], prediction: str, expected: Any):
    score = udf.py_fn(prediction, expected)
    assert isinstance(score, float)
    assert 0.0 <= score <= 1.0
    assert score == pytest.approx(reference(prediction, expected))


@pytest.mark.parametrize('udf', [rouge1, rouge2, rouge_l], ids=lambda udf: udf.name)
def test_rouge_takes_best_reference(udf: Any):
    prediction, refs = 'App crashes when uploading photos.', ['Crash on upload.', 'The app crashes on photo upload.']
    singles = [udf.py_fn(prediction, ref) for ref in refs]
    assert singles[0] != singles[1]
    assert udf.py_fn(prediction, refs) == max(singles)


PREDICTION = 'the cat sat on the mat'
REFS = ['the cat sat on a mat', 'a cat was sitting on the mat']


def test_bleu_pools_all_references():
    multi = bleu.py_fn(PREDICTION, REFS)
    assert multi == pytest.approx(sacrebleu.sentence_bleu(PREDICTION, REFS).score / 100)
    for ref in REFS:
        assert multi != pytest.approx(sacrebleu.sentence_bleu(PREDICTION, [ref]).score / 100)


def test_chrf_scores_against_best_reference():
    # sacrebleu's chrF, unlike its BLEU, keeps the statistics of the best-scoring reference only.
    multi = chrf.py_fn(PREDICTION, REFS)
    singles = [sacrebleu.sentence_chrf(PREDICTION, [ref]).score / 100 for ref in REFS]
    assert multi == pytest.approx(sacrebleu.sentence_chrf(PREDICTION, REFS).score / 100)
    assert multi == pytest.approx(max(singles))
    assert multi != pytest.approx(min(singles))


@pytest.mark.parametrize('name', EXPECTED_SCORERS)
@pytest.mark.parametrize(
    'prediction, expected',
    [
        (None, 'BILLING'),
        (None, ['BILLING', 'REFUND']),
        ('', 'The customer wants a refund.'),
        ('', ['The customer wants a refund.', 'Refund requested.']),
        ('The customer wants a refund.', None),
        ('The customer wants a refund.', []),
    ],
)
def test_no_prediction_or_no_reference_scores_zero(name: str, prediction: str | None, expected: Any):
    assert SCORERS[name].udf.py_fn(prediction, expected) == 0.0


@pytest.mark.parametrize('name', EXPECTED_SCORERS)
def test_expected_must_be_string_or_list_of_strings(name: str):
    with pytest.raises(TypeError, match=r"expected must be a string or a list of strings, got \{'label': 1\}"):
        SCORERS[name].udf.py_fn('BILLING', {'label': 1})


@pytest.mark.parametrize(
    'prediction, expected, score',
    [
        ('BILLING', 'BILLING', 1.0),
        ('BILLING', 'REFUND', 0.0),
        ('billing', 'BILLING', 0.0),
        (' BILLING', 'BILLING', 0.0),
        ('REFUND', ['BILLING', 'REFUND'], 1.0),
        ('OTHER', ['BILLING', 'REFUND'], 0.0),
        ('', '', 1.0),
    ],
)
def test_exact_match(prediction: str, expected: Any, score: float):
    assert exact_match.py_fn(prediction, expected) == score


@pytest.mark.parametrize(
    'prediction, expected, score',
    [
        (' Billing. ', 'BILLING', 1.0),
        ('Technical   support', 'technical support!', 1.0),
        ('"Billing"', 'billing', 1.0),
        ('ｂｉｌｌｉｎｇ', 'Billing', 1.0),  # fullwidth letters fold under NFKC
        ('Straße', 'STRASSE', 1.0),  # casefold, not lower
        ('e-mail', 'email', 1.0),
        ('Billing', 'Refund', 0.0),
        ('Bill ing', 'Billing', 0.0),
        ('billing.', ['REFUND', 'Billing'], 1.0),
    ],
)
def test_normalized_match(prediction: str, expected: Any, score: float):
    assert normalized_match.py_fn(prediction, expected) == score


def test_normalize():
    assert scores.normalize('  Hello,\tWORLD!\n ') == 'hello world'


@pytest.mark.parametrize(
    'prediction, pattern, score',
    [
        ('Answer: 42', r'\b42\b', 1.0),
        ('Answer: 420', r'\b42\b', 0.0),
        ('The category is BILLING.', r'BILLING|REFUND', 1.0),
        ('the category is billing.', r'BILLING|REFUND', 0.0),
        ('', r'^$', 1.0),
        (None, r'.*', 0.0),
    ],
)
def test_regex_match(prediction: str | None, pattern: str, score: float):
    assert regex_match.py_fn(prediction, pattern=pattern) == score


@pytest.mark.parametrize('prediction', ['anything', None])
def test_regex_match_invalid_pattern(prediction: str | None):
    with pytest.raises(ValueError, match=r"invalid regex pattern '\(unclosed'"):
        regex_match.py_fn(prediction, pattern='(unclosed')


TICKET_SCHEMA = {
    'type': 'object',
    'properties': {'category': {'enum': ['BILLING', 'REFUND']}, 'urgent': {'type': 'boolean'}},
    'required': ['category'],
}


@pytest.mark.parametrize(
    'prediction, schema, score',
    [
        ('{"category": "BILLING"}', None, 1.0),
        ('[1, 2, 3]', None, 1.0),
        ('"just a string"', None, 1.0),
        ('{"category": "BILLING"', None, 0.0),
        ('The category is BILLING.', None, 0.0),
        ('', None, 0.0),
        ('NaN', None, 0.0),
        (None, None, 0.0),
        ('{"category": "BILLING", "urgent": true}', TICKET_SCHEMA, 1.0),
        ('{"category": "SHIPPING"}', TICKET_SCHEMA, 0.0),
        ('{"urgent": true}', TICKET_SCHEMA, 0.0),
        ('{"category": "BILLING", "urgent": "yes"}', TICKET_SCHEMA, 0.0),
        ('{"category": "BILLING"', TICKET_SCHEMA, 0.0),
        (None, TICKET_SCHEMA, 0.0),
    ],
)
def test_json_valid(prediction: str | None, schema: Any, score: float):
    assert json_valid.py_fn(prediction, schema) == score


def test_json_valid_invalid_schema():
    with pytest.raises(ValueError, match='invalid JSON Schema'):
        json_valid.py_fn('{}', {'type': 'no-such-type'})


def test_registry_is_consistent():
    for name, info in SCORERS.items():
        assert info.name == name == info.udf.name
        assert name in scores.__all__
        assert info.higher_is_better
        assert info.description
        assert info.udf.__doc__
    for kind, names in DEFAULT_SCORERS.items():
        assert all(name in SCORERS for name in names), kind


def test_get_scorer():
    assert get_scorer('rouge_l').udf is rouge_l
    assert get_scorer('exact_match').uses_expected
    assert not get_scorer('json_valid').uses_expected


def test_get_scorer_unknown_name():
    with pytest.raises(KeyError) as excinfo:
        get_scorer('rougeL')
    assert excinfo.value.args[0] == (
        "unknown scorer 'rougeL'; known: bleu, chrf, exact_match, json_valid, normalized_match, regex_match, "
        "rouge1, rouge2, rouge_l; did you mean 'rouge_l'?"
    )
    with pytest.raises(KeyError) as excinfo:
        get_scorer('perplexity')
    assert 'did you mean' not in excinfo.value.args[0]


def test_scores_as_computed_columns():
    import pixeltable as pxt

    from workspace import config

    config.connect()
    name = f'scores_test_{uuid.uuid4().hex[:8]}'
    t = pxt.create_table(name, {'prediction': pxt.String | None, 'expected': pxt.Json})
    # Explicit column names: Pixeltable lowercases them, so a column named after `rougeL` would read back as 'rougel'.
    columns = {'exact_match': exact_match, 'rouge_l': rouge_l, 'chrf': chrf}
    try:
        for column, udf in columns.items():
            t.add_computed_column(**{column: udf(t.prediction, t.expected)})
        t.insert(
            [
                {'prediction': 'BILLING', 'expected': 'BILLING'},
                {'prediction': 'the cat sat on the mat', 'expected': ['the cat sat on a mat', 'a cat on the mat']},
                {'prediction': None, 'expected': 'User unable to log in.'},
            ]
        )
        rows = list(t.collect())
        assert len(rows) == 3
        for row in rows:
            for column, udf in columns.items():
                assert row[column] == pytest.approx(udf.py_fn(row['prediction'], row['expected'])), (column, row)
        assert sorted(row['exact_match'] for row in rows) == [0.0, 0.0, 1.0]
        assert all(0.0 < row['rouge_l'] < 1.0 for row in rows if row['prediction'] == 'the cat sat on the mat')
    finally:
        pxt.drop_table(name)
