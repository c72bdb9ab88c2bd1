"""Scorers: a prediction and the expected answer (one reference or a list of them) in, a score in [0, 1] out.

A prediction of None (the model errored, or its output did not parse) scores 0.0, as does a missing or empty
expected answer. Every score is higher-is-better; BLEU and chrF are sacrebleu's 0..100 scores divided by 100.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
import unicodedata
from typing import TYPE_CHECKING, Any

import pixeltable as pxt

# jsonschema, rouge-score and sacrebleu take seconds to import; they load on the first score that needs them.
if TYPE_CHECKING:
    import sacrebleu
    from jsonschema.protocols import Validator
    from rouge_score import rouge_scorer

__all__ = [
    'exact_match',
    'normalized_match',
    'regex_match',
    'json_valid',
    'rouge1',
    'rouge2',
    'rouge_l',
    'bleu',
    'chrf',
    'gated',
    'TIERS',
    'ScorerInfo',
    'SCORERS',
    'DEFAULT_SCORERS',
    'get_scorer',
    'normalize',
]


def _references(expected: Any) -> list[str]:
    """Return the reference strings of an `expected` value: a string, a list of strings, or None (no references)."""
    if expected is None:
        return []
    if isinstance(expected, str):
        return [expected]
    if isinstance(expected, list) and all(isinstance(ref, str) for ref in expected):
        return expected
    raise TypeError(f'expected must be a string or a list of strings, got {expected!r}; fix the dataset row')


def normalize(text: str) -> str:
    """Return `text` casefolded, NFKC-normalized, without punctuation and with runs of whitespace collapsed.

    >>> normalize(' Billing. ')
    'billing'
    """
    folded = unicodedata.normalize('NFKC', unicodedata.normalize('NFKC', text).casefold())
    # Punctuation is dropped rather than spaced out, as in SQuAD's answer normalization: "e-mail" == "email".
    kept = ''.join(ch for ch in folded if not unicodedata.category(ch).startswith('P'))
    return ' '.join(kept.split())


@pxt.udf
def exact_match(prediction: str | None, expected: pxt.Json | None) -> float:
    """Prediction and expected answer (or list of accepted answers) in; 1.0 if it equals one exactly, else 0.0."""
    if prediction is None:
        return 0.0
    return float(prediction in _references(expected))


@pxt.udf
def normalized_match(prediction: str | None, expected: pxt.Json | None) -> float:
    """Prediction and expected answer(s) in; 1.0 if equal to one after `normalize` (case, punctuation), else 0.0."""
    if prediction is None:
        return 0.0
    return float(normalize(prediction) in {normalize(ref) for ref in _references(expected)})


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(f'invalid regex pattern {pattern!r}: {err}') from None


@pxt.udf
def regex_match(prediction: str | None, *, pattern: str) -> float:
    """Prediction and a regular expression in; 1.0 if the pattern occurs in the prediction (`re.search`), else 0.0."""
    compiled = _compiled(pattern)  # a bad pattern is a mistake in the scorer, so it raises even for a None row
    if prediction is None:
        return 0.0
    return float(compiled.search(prediction) is not None)


def _reject_constant(name: str) -> Any:
    raise ValueError(f'{name} is not valid JSON')


@functools.lru_cache(maxsize=64)
def _validator(schema_text: str) -> Validator:
    import jsonschema

    schema = json.loads(schema_text)
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as err:
        raise ValueError(f'invalid JSON Schema {schema_text[:80]!r}: {err.message}') from None
    return cls(schema)


@pxt.udf
def json_valid(prediction: str | None, schema: pxt.Json | None = None) -> float:
    """Prediction and optional JSON Schema in; 1.0 if the prediction is JSON (valid against the schema), else 0.0."""
    # Checked before the prediction, so that a bad schema raises on every row rather than only on parseable ones.
    validator = None if schema is None else _validator(json.dumps(schema, sort_keys=True))
    if prediction is None:
        return 0.0
    try:
        value = json.loads(prediction, parse_constant=_reject_constant)
    except ValueError:
        return 0.0
    return float(validator is None or validator.is_valid(value))


@functools.cache
def _rouge_scorer(rouge_type: str) -> rouge_scorer.RougeScorer:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([rouge_type], use_stemmer=True)


def _rouge(rouge_type: str, prediction: str | None, expected: Any) -> float:
    refs = _references(expected)
    if prediction is None or not refs:
        return 0.0
    scorer = _rouge_scorer(rouge_type)
    return max(float(scorer.score(ref, prediction)[rouge_type].fmeasure) for ref in refs)


@pxt.udf
def rouge1(prediction: str | None, expected: pxt.Json | None) -> float:
    """Prediction and reference(s) in; ROUGE-1 (unigram) F-measure against the best-matching reference out."""
    return _rouge('rouge1', prediction, expected)


@pxt.udf
def rouge2(prediction: str | None, expected: pxt.Json | None) -> float:
    """Prediction and reference(s) in; ROUGE-2 (bigram) F-measure against the best-matching reference out."""
    return _rouge('rouge2', prediction, expected)


@pxt.udf
def rouge_l(prediction: str | None, expected: pxt.Json | None) -> float:
    """Prediction and reference(s) in; ROUGE-L (longest common subsequence) F-measure, best reference, out."""
    return _rouge('rougeL', prediction, expected)


@functools.cache
def _bleu_metric() -> sacrebleu.metrics.BLEU:
    import sacrebleu

    return sacrebleu.metrics.BLEU(effective_order=True)


@functools.cache
def _chrf_metric() -> sacrebleu.metrics.CHRF:
    import sacrebleu

    return sacrebleu.metrics.CHRF()


@pxt.udf
def bleu(prediction: str | None, expected: pxt.Json | None) -> float:
    """Prediction and reference(s) in; sentence BLEU against all references together, divided by 100, out."""
    refs = _references(expected)
    if prediction is None or not refs:
        return 0.0
    return _bleu_metric().sentence_score(prediction, refs).score / 100


@pxt.udf
def chrf(prediction: str | None, expected: pxt.Json | None) -> float:
    """Prediction and reference(s) in; sentence chrF against all references together, divided by 100, out."""
    refs = _references(expected)
    if prediction is None or not refs:
        return 0.0
    return _chrf_metric().sentence_score(prediction, refs).score / 100


@pxt.udf
def gated(score: float | None, gate: float | None, *, minimum: float = 1.0) -> float | None:
    """A score and a cheaper scorer's score in; the score where the cheaper one reached `minimum`, else 0.0."""
    if gate is None or gate < minimum:
        return 0.0
    return score


#: Tiers of scoring, cheapest first: checks with one right answer, similarity measures, then model judges.
TIERS = ('deterministic', 'heuristic', 'judge')


@dataclasses.dataclass(frozen=True)
class ScorerInfo:
    """A scorer as the library knows it: its name, its UDF, its tier and how to read its scores."""

    name: str
    udf: pxt.Function
    uses_expected: bool
    description: str
    higher_is_better: bool = True
    tier: str = 'deterministic'


#: Every scorer by its UDF's name.
SCORERS: dict[str, ScorerInfo] = {
    info.name: info
    for info in [
        ScorerInfo('exact_match', exact_match, True, 'prediction equals an expected answer exactly'),
        ScorerInfo('normalized_match', normalized_match, True, 'equal after ignoring case, punctuation, spacing'),
        ScorerInfo('regex_match', regex_match, False, 'prediction contains a match of a regular expression'),
        ScorerInfo('json_valid', json_valid, False, 'prediction is JSON, valid against a schema if given'),
        ScorerInfo(
            'rouge1', rouge1, True, 'ROUGE-1 F-measure: unigram overlap with the best reference', tier='heuristic'
        ),
        ScorerInfo(
            'rouge2', rouge2, True, 'ROUGE-2 F-measure: bigram overlap with the best reference', tier='heuristic'
        ),
        ScorerInfo(
            'rouge_l', rouge_l, True, 'ROUGE-L F-measure: longest common subsequence, best reference', tier='heuristic'
        ),
        ScorerInfo('bleu', bleu, True, 'sentence BLEU / 100 against all references', tier='heuristic'),
        ScorerInfo('chrf', chrf, True, 'sentence chrF / 100 against all references', tier='heuristic'),
    ]
}

#: The scorers an evaluation runs by default, by the kind of the version's output spec.
DEFAULT_SCORERS: dict[str, list[str]] = {
    'choice': ['exact_match'],
    'text': ['rouge1', 'rouge2', 'rouge_l', 'bleu', 'chrf'],
    'json': ['json_valid'],
}


def _fold_name(name: str) -> str:
    return name.casefold().replace('_', '').replace('-', '')


def get_scorer(name: str) -> ScorerInfo:
    """Return the scorer called `name`, or raise KeyError listing the known names and the closest one.

    >>> get_scorer('rouge_l').udf is rouge_l
    True
    """
    if name in SCORERS:
        return SCORERS[name]
    folded = {_fold_name(known): known for known in SCORERS}
    close = difflib.get_close_matches(_fold_name(name), folded, n=1)
    hint = f'; did you mean {folded[close[0]]!r}?' if close else ''
    raise KeyError(f'unknown scorer {name!r}; known: {", ".join(sorted(SCORERS))}{hint}')
