"""Racing: growing dev subsamples, the clearly worse dropped by a paired test, cheapest first, time shares, and a
budget that ends the race early still leaves every scored prediction (pure logic, no model)."""

from __future__ import annotations

import random

from workspace.optimization.racing import Entrant, Group, Race, interleaved, rung_sizes
from workspace.optimization.selection import build_metric, verdict

EXPECTED = {f'e{i:03d}': ('a', 'b', 'c')[i % 3] for i in range(120)}
METRIC = build_metric('macro_f1', task='choice', expected=EXPECTED)


def _answers(right: float, seed: int) -> dict[str, str]:
    """A candidate that answers `right` of the examples correctly and the others with the next label."""
    rng = random.Random(seed)
    nxt = {'a': 'b', 'b': 'c', 'c': 'a'}
    return {ex: label if rng.random() < right else nxt[label] for ex, label in EXPECTED.items()}


def _race(skill: dict[str, float], seconds: dict[str, float], clock=None, slower: float = 1.0) -> tuple[Race, list]:
    """A race of one-member groups; scoring reads fixed answers, counts requests and advances a fake clock
    (`slower` times what the groups' measured seconds say)."""
    answers = {name: _answers(right, round(right * 100)) for name, right in skill.items()}  # equal skill, equal answers
    groups = [
        Group(name, [Entrant(i, name, name, baseline=i == 0)], seconds=seconds[name]) for i, name in enumerate(skill)
    ]
    calls: list[tuple[str, int]] = []

    def score(group, ids, rung, rung_ids):
        for ex in ids:
            for member in group.alive():
                member.predictions[ex] = answers[group.key][ex]
            group.scored.append(ex)
        calls.append((group.key, len(ids)))
        if clock is not None:
            clock[0] -= seconds[group.key] * len(ids) * slower
            if clock[0] <= 0:
                return 'max_minutes'
        return None

    race = Race(
        groups,
        interleaved(EXPECTED, 0),
        rung_sizes(len(EXPECTED)),
        value=lambda e, ids: METRIC.score({ex: e.predictions[ex] for ex in ids}),
        p_better=_p_better,
        seconds_left=(lambda: clock[0]) if clock is not None else (lambda: None),
    )
    race.run_with = score  # type: ignore[attr-defined]
    return race, calls


def _p_better(a, b, ids):
    result = verdict(METRIC, {ex: b.predictions[ex] for ex in ids}, {ex: a.predictions[ex] for ex in ids}, split='dev',
                     names=(b.name, a.name), resamples=500)  # fmt: skip
    return result.p_value if result.diff > 0 else 1.0


def test_prefixes_of_the_order_are_stratified_and_the_rungs_double():
    order = interleaved(EXPECTED, seed=1)
    assert sorted(order) == sorted(EXPECTED) and order == interleaved(EXPECTED, seed=1) != interleaved(EXPECTED, 2)
    for n in (3, 9, 30):
        counts = {label: sum(EXPECTED[ex] == label for ex in order[:n]) for label in 'abc'}
        assert max(counts.values()) - min(counts.values()) <= 1
    assert rung_sizes(120) == [8, 16, 32, 64, 120] and rung_sizes(231) == [15, 30, 60, 120, 231]
    assert rung_sizes(5) == [5]


def test_the_clearly_worse_are_dropped_early_and_the_best_goes_the_whole_way():
    race, calls = _race({'baseline': 0.35, 'good': 0.9, 'close': 0.85, 'bad': 0.1}, dict.fromkeys(
        ['baseline', 'good', 'close', 'bad'], 1.0))  # fmt: skip
    race.run(race.run_with)
    by_name = {e.name: e for e in race.entrants}
    assert by_name['bad'].out.startswith('dropped after rung') and by_name['baseline'].out
    assert by_name['good'].out is None and len(by_name['good'].predictions) > len(by_name['bad'].predictions)
    # the dropped ones were never scored again
    assert sum(n for name, n in calls if name == 'bad') == len(by_name['bad'].predictions) < len(EXPECTED)
    assert race.stop is None and race.events


def test_cheapest_first_within_a_rung_and_a_budget_ending_mid_race_keeps_what_was_scored():
    seconds = {'baseline': 3.0, 'cheap': 0.1, 'dear': 1.0}
    clock = [60.0]
    race, calls = _race({'baseline': 0.5, 'cheap': 0.6, 'dear': 0.6}, seconds, clock, slower=4.0)
    race.run(race.run_with)
    assert [name for name, _ in calls[:3]] == ['cheap', 'dear', 'baseline']  # the first rung, by cost
    assert race.stop == 'max_minutes'  # slower than measured: the budget ends the race in the middle of a rung
    assert all(e.predictions for e in race.entrants)  # everyone scored on the first rung: the decision has evidence


def test_with_a_time_budget_the_first_rung_leaves_out_what_would_overrun_its_share_but_never_the_baseline():
    seconds = {'baseline': 2.0, 'cheap': 0.1, 'slow': 50.0}
    clock = [300.0]
    race, calls = _race({'baseline': 0.5, 'cheap': 0.6, 'slow': 0.9}, seconds, clock)
    race.run(race.run_with)
    slow = next(e for e in race.entrants if e.name == 'slow')
    assert slow.out.startswith('not raced: about 50.00 s a request') and not slow.predictions
    assert next(e for e in race.entrants if e.baseline).predictions


def test_a_group_whose_speed_was_never_measured_is_left_out_with_a_reason_once_the_share_is_spent():
    # the slow group spends the first rung's share; the next one's speed is unknown (its answers were all stored)
    seconds = {'baseline': 2.0, 'slow': 50.0, 'unknown': 0.0}
    clock = [900.0]
    race, _ = _race({'baseline': 0.5, 'slow': 0.9, 'unknown': 0.6}, seconds, clock)
    race.groups[2].seconds = None
    race.groups[1].seconds = 1.0  # measured as quick, then slower than that: the share is spent
    race.run(race.run_with)
    unknown = next(e for e in race.entrants if e.name == 'unknown')
    assert (
        unknown.out == "not raced: the first rung had spent its share of the time budget before this candidate's turn"
    )


def test_a_race_without_a_time_budget_runs_to_the_last_rung():
    race, _ = _race({'baseline': 0.6, 'twin': 0.6}, {'baseline': 1.0, 'twin': 1.0})
    race.run(race.run_with)
    assert all(e.rung == len(race.rungs) - 1 and len(e.predictions) == len(EXPECTED) for e in race.entrants)


def test_a_baseline_dropped_early_is_scored_on_the_deepest_rung_for_the_decision():
    race, calls = _race(
        {'baseline': 0.3, 'good': 0.9, 'close': 0.88}, dict.fromkeys(['baseline', 'good', 'close'], 1.0)
    )
    race.run(race.run_with)
    baseline = race.entrants[0]
    assert baseline.out.startswith('dropped after rung') and len(baseline.predictions) < len(EXPECTED)
    deepest = max(e.rung for e in race.entrants[1:])
    race.settle(race.run_with)
    assert set(baseline.predictions) == set(race.order[: race.rungs[deepest]]) and baseline.rung == deepest
    assert baseline.out.startswith('dropped after rung')  # still out of the race: scored for the decision only
    assert calls[-1][0] == 'baseline' and 'for the decision' in race.events[-1]


def test_settling_leaves_the_baseline_as_it_is_when_the_time_left_does_not_cover_it():
    clock = [10_000.0]
    skill, seconds = {'baseline': 0.3, 'good': 0.9, 'close': 0.88}, {'baseline': 5.0, 'good': 0.1, 'close': 0.1}
    race, calls = _race(skill, seconds, clock)
    race.run(race.run_with)
    scored = dict(race.entrants[0].predictions)
    assert len(scored) < len(race.order[: race.rungs[max(e.rung for e in race.entrants[1:])]])
    clock[0] = 1.0  # a second left: the baseline's missing examples would take minutes
    race.settle(race.run_with)
    assert race.entrants[0].predictions == scored and 'no time left' in race.events[-1] and race.stop is None
