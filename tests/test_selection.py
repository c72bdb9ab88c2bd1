"""Choosing among candidates: split-level metrics, degenerate candidates refused, acceptance by a paired test."""

from __future__ import annotations

import random

import pytest

from workspace.core import metrics
from workspace.errors import OptimizeError
from workspace.optimization.selection import Scored, build_metric, candidate_flags, decide, verdict

# 70 rows of a majority label and 30 of a minority one, like poem_sentiment's no_impact.
EXPECTED = {f'e{i}': 'no_impact' if i < 70 else 'positive' for i in range(100)}


def _predict(right: float, seed: int, majority_bias: float = 0.0) -> dict[str, str]:
    rng = random.Random(seed)
    out = {}
    for ex, label in EXPECTED.items():
        if rng.random() < majority_bias:
            out[ex] = 'no_impact'
        else:
            out[ex] = label if rng.random() < right else ('positive' if label == 'no_impact' else 'no_impact')
    return out


def test_the_default_label_metric_is_macro_f1_of_the_whole_split():
    metric = build_metric(None, task='choice', expected=EXPECTED)
    always = dict.fromkeys(EXPECTED, 'no_impact')
    assert metric.name == 'macro_f1' and metric.split_level
    assert metric.score(always) == pytest.approx(
        metrics.split_metric('macro_f1', list(EXPECTED.values()), list(always.values()))
    )
    assert metric.score(always) < build_metric('accuracy', task='choice', expected=EXPECTED).score(always) == 0.7


def test_the_per_example_proxy_averages_to_balanced_accuracy():
    metric = build_metric('balanced_accuracy', task='choice', expected=EXPECTED)
    guess = _predict(0.6, seed=1)
    mean = sum(metric.per_example(guess[ex], EXPECTED[ex]) for ex in EXPECTED) / len(EXPECTED)
    assert mean == pytest.approx(metric.score(guess))
    # answering the majority everywhere earns the proxy exactly 1 / (number of labels)
    assert sum(metric.per_example('no_impact', e) for e in EXPECTED.values()) / 100 == pytest.approx(0.5)


@pytest.mark.parametrize(
    'metric,task,match',
    [
        ('macro_f1', 'text', r"metric 'macro_f1' needs a label dataset.*use metric='rouge_l'"),
        ('acuracy', 'choice', r"unknown scorer 'acuracy'.*or accuracy, macro_f1, balanced_accuracy"),
        ('regex_match', 'choice', r"scorer 'regex_match' needs knobs"),
    ],
)
def test_unknown_or_unfit_metrics_are_refused_with_the_fix(metric, task, match):
    with pytest.raises(OptimizeError, match=match):
        build_metric(metric, task=task, expected=EXPECTED)


def test_a_candidate_answering_one_label_is_flagged_in_words():
    always = dict.fromkeys(EXPECTED, 'no_impact')
    assert candidate_flags(always, _predict(0.6, 2), EXPECTED) == [
        'predicts no_impact on 100 of 100 rows; expected share 70%',
        'accuracy rises 7.0 points but macro-F1 falls 20.4 points against the baseline',
    ]
    assert candidate_flags(_predict(0.8, 3), _predict(0.6, 2), EXPECTED) == []


def _right_on(majority: int, minority: int) -> dict[str, str]:
    """Right on the first `majority` of the 70 majority rows and the first `minority` of the 30 minority rows."""
    flip = {'no_impact': 'positive', 'positive': 'no_impact'}
    return {
        ex: label if (i < majority if i < 70 else i - 70 < minority) else flip[label]
        for i, (ex, label) in enumerate(EXPECTED.items())
    }


def test_rising_accuracy_with_falling_macro_f1_is_flagged():
    baseline, biased = _right_on(50, 25), _right_on(70, 10)  # accuracy 0.75 -> 0.80, macro-F1 0.733 -> 0.688
    assert 'accuracy rises 5.0 points but macro-F1 falls 4.6 points against the baseline' in candidate_flags(
        biased, baseline, EXPECTED
    )


def _scored(trial, predictions, metric, name=None):
    return Scored(trial, name or f'trial {trial}', predictions, metric.score(predictions))


def test_the_majority_collapse_is_refused_even_when_it_scores_best():
    metric = build_metric('accuracy', task='choice', expected=EXPECTED)
    baseline = _scored(0, _predict(0.6, 6), metric, 'router:v1')
    collapse = _scored(1, dict.fromkeys(EXPECTED, 'no_impact'), metric)
    decision = decide(metric, baseline, [collapse], task='choice')
    assert not decision.accepted and decision.trial is None and 1 in decision.flags
    assert 'refused as degenerate' in decision.reason and 'predicts no_impact on 100 of 100' in decision.reason
    opted_in = decide(metric, baseline, [collapse], task='choice', allow_degenerate=True)
    assert opted_in.trial == 1


def test_a_candidate_replaces_the_baseline_only_when_the_paired_test_says_so():
    metric = build_metric(None, task='choice', expected=EXPECTED)
    baseline = _scored(0, _right_on(50, 15), metric, 'router:v1')
    much_better = _scored(1, _right_on(68, 28), metric)
    slightly = _right_on(50, 16)  # one more minority row right
    decision = decide(metric, baseline, [much_better], task='choice')
    assert decision.accepted and decision.trial == 1 and decision.dev.p_value < 0.001
    assert decision.reason.startswith('trial 1 replaces router:v1: macro_f1') and 'p < 0.1' in decision.reason
    noisy = decide(metric, baseline, [_scored(2, slightly, metric)], task='choice')
    assert not noisy.accepted and noisy.trial == 2 and noisy.dev.diff > 0
    assert noisy.reason.startswith('kept router:v1: the best candidate, trial 2, scored macro_f1')
    assert 'not better by p < 0.1' in noisy.reason
    by_margin = decide(metric, baseline, [_scored(2, slightly, metric)], task='choice', margin=0.001)
    assert by_margin.accepted and 'at least +0.1 points' in by_margin.reason


def test_a_verdict_names_both_versions():
    metric = build_metric(None, task='choice', expected=EXPECTED)
    result = verdict(metric, _predict(0.6, 9), _predict(0.95, 10), split='test', names=('router:v1', 'router:v4'))
    assert result.sentence().startswith('router:v4 is better than router:v1 on test: macro_f1')
    same = verdict(metric, _predict(0.6, 9), _predict(0.6, 9), split='test', names=('router:v1', 'router:v2'))
    assert same.sentence().startswith('no detectable difference between router:v2 and router:v1 on test')
