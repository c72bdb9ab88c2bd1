"""A/B experiments: stable assignment, logged outcomes, and a report checked against scipy and hand computations."""

from __future__ import annotations

import datetime
import math
import re
from collections import Counter

import numpy as np
import pytest
import scipy.stats

from workspace import errors
from workspace.analysis.ab_report import ab_report, wilson_interval
from workspace.serving import traffic as ab
from workspace.serving.traffic import log_outcome, log_outcomes
from workspace.storage import tables

TEMPLATE = 'Ticket: {{ text }}\nCategory:'
SPLIT = {'v1': 50, 'v3': 50}
IDS = [f'user-{i}' for i in range(10_000)]


@pytest.fixture(autouse=True)
def fresh_assign_cache():
    """Each test resolves splits against its own empty workspace, not a split resolved by an earlier test."""
    ab._assigners.clear()
    yield
    ab._assigners.clear()


def three_versions(ws):
    v1 = ws.create_version('ticket_router', template=TEMPLATE)
    v2 = ws.edit(v1, template='Support ticket: {{ text }}\nCategory:')
    v3 = ws.edit(v2, template='Customer ticket: {{ text }}\nCategory:')
    return v1, v2, v3


def rows_for(arm: str, outcomes: list[float], *, start: int = 0, experiment: str = 'default') -> list[dict]:
    """One event per unit, logged by version alone, so the arm is the version's short name."""
    return [
        {
            'prompt': 'ticket_router',
            'unit_id': f'{arm}-{start + i}',
            'outcome': o,
            'version': arm,
            'experiment': experiment,
        }
        for i, o in enumerate(outcomes)
    ]


def binary(successes: int, n: int) -> list[float]:
    return [1.0] * successes + [0.0] * (n - successes)


# --- assignment ---------------------------------------------------------------------------------------------------

# Pinned: if these change, every running experiment would reshuffle its units mid-test.
GOLDEN = [
    ({'v1': 50, 'v3': 50}, 'default', ['v1', 'v3', 'v3', 'v3', 'v1', 'v3', 'v1', 'v3']),
    ({'v1': 50, 'v3': 50}, 'tone', ['v1', 'v3', 'v1', 'v3', 'v1', 'v3', 'v1', 'v1']),
    ({'v1': 70, 'v2': 20, 'v3': 10}, 'default', ['v1', 'v3', 'v3', 'v2', 'v1', 'v2', 'v3', 'v1']),
]


def test_assignment_is_pinned_across_processes_and_machines(ws):
    three_versions(ws)
    assert ab._point('ticket_router', 'default', 'user-1') == 0.10826218674797561
    units = ['user-1', 'user-2', 'user-3', 'user-4', 'user-5', 'user-6', 'user-42', '42']
    units_70 = [f'user-{i}' for i in range(1, 9)]
    for split, experiment, expected in GOLDEN:
        router = ab.Assigner('ticket_router', split, experiment=experiment)
        ids = units_70 if len(split) == 3 else units
        assert [router.arm(u) for u in ids] == expected, (split, experiment)


def test_same_unit_same_arm_everywhere(ws):
    v1, _, v3 = three_versions(ws)
    first, second = ab.Assigner('ticket_router', SPLIT), ab.Assigner('ticket_router', {'v1': 1, 'v3': 1})
    for unit in IDS[:200]:
        assert first.arm(unit) == second.arm(unit) == first.arm(unit)
        assert ab.assign('ticket_router', unit, SPLIT) == first.assign(unit)
    assert first.arm(42) == first.arm('42')  # an int and its decimal string are the same unit
    assert {first.assign(u).id for u in IDS[:200]} == {v1.id, v3.id}
    assert first.arms == ('v1', 'v3') and first.shares == {'v1': 0.5, 'v3': 0.5}


@pytest.mark.parametrize('split', [{'v1': 50, 'v3': 50}, {'v1': 70, 'v2': 20, 'v3': 10}, {'v3': 1, 'v1': 3}])
def test_proportions_within_one_point_over_10000_units(ws, split):
    three_versions(ws)
    router = ab.Assigner('ticket_router', split)
    counts = Counter(router.arm(u) for u in IDS)
    total = sum(split.values())
    for arm, weight in split.items():
        assert abs(counts[arm] / len(IDS) - weight / total) < 0.01, (arm, counts)


def test_assigner_never_touches_pixeltable_after_construction(ws):
    import pixeltable as pxt

    three_versions(ws)
    router = ab.Assigner('ticket_router', {'v1': 70, 'v2': 20, 'v3': 10})
    expected = [router.arm(u) for u in IDS[:100]]
    pxt.drop_dir('prompt_workspace', force=True)  # every table gone: only hashing can still answer
    versions = [router.assign(u) for u in IDS]
    assert [router.arm(u) for u in IDS[:100]] == expected and len(versions) == 10_000


def test_assign_reuses_the_resolved_split(ws, monkeypatch):
    v1, _, v3 = three_versions(ws)
    ws.set_label(v1, 'production')
    split = {'@production': 50, 'v3': 50}
    unit = next(u for u in IDS if ab.Assigner('ticket_router', split).arm(u) == '@production')
    assert ab.assign('ticket_router', unit, split).id == v1.id
    ws.set_label(v3, 'production')
    assert ab.assign('ticket_router', unit, split).id == v1.id  # cached for ASSIGN_REFRESH_SECONDS
    monkeypatch.setattr(ab, 'ASSIGN_REFRESH_SECONDS', 0.0)
    assert ab.assign('ticket_router', unit, split).id == v3.id  # the label move reached serving code


def test_experiment_name_reshuffles_units(ws):
    three_versions(ws)
    a = ab.Assigner('ticket_router', SPLIT, experiment='tone')
    b = ab.Assigner('ticket_router', SPLIT, experiment='length')
    same = sum(a.arm(u) == b.arm(u) for u in IDS) / len(IDS)
    assert 0.47 < same < 0.53  # independent 50/50 assignments agree on about half the units


def test_split_keys_name_versions_in_every_form(ws):
    v1, v2, v3 = three_versions(ws)
    ws.set_label(v2, 'production')
    router = ab.Assigner(
        'ticket_router', {'1': 1, 'v2': 1, 'ticket_router:v3': 1, '@production': 1, 'ticket_router@production': 1}
    )
    assert {arm: v.id for arm, v in router.versions.items()} == {
        '1': v1.id,
        'v2': v2.id,
        'ticket_router:v3': v3.id,
        '@production': v2.id,
        'ticket_router@production': v2.id,
    }
    assert 'v2=ticket_router:v2 20%' in repr(router)


BAD_SPLITS = [
    ({}, 'ComparisonError', r"traffic is empty; name at least one version and its weight, e.g. \{'v1': 50"),
    (['v1', 'v3'], 'ComparisonError', r'traffic must map versions to weights'),
    ({'v1': 50, 'v3': 0}, 'ComparisonError', r"weight of 'v3' is 0; weights must be positive numbers"),
    ({'v1': -5}, 'ComparisonError', r"weight of 'v1' is -5; weights must be positive"),
    ({'v1': '50'}, 'ComparisonError', r"weight of 'v1' is '50'; weights must be positive numbers"),
    ({'v1': True}, 'ComparisonError', r"weight of 'v1' is True"),
    ({'v1': float('nan')}, 'ComparisonError', r"weight of 'v1' is nan"),
    ({1: 1, '1': 1}, 'ComparisonError', r"traffic names '1' twice; give each version one weight"),
    ({'v1': 50, 'v7': 50}, 'VersionError', r"traffic key 'v7': 'ticket_router' has no version 7; it has v1 to v3"),
    ({'v1': 50, 'other:v1': 50}, 'VersionError', r"prompt 'other' has no versions; known prompts: ticket_router"),
    ({'v1': 50, 'banana': 50}, 'VersionError', r"traffic key 'banana' names no version of 'ticket_router'; use 'v3'"),
    ({'v1': 50, '@canary': 50}, 'LabelError', r"ticket_router@canary does not exist; labels of 'ticket_router': none"),
]


def test_bad_splits_are_refused_with_the_fix(ws):
    three_versions(ws)  # one workspace for the whole table: each case only reads it
    for split, error, message in BAD_SPLITS:
        with pytest.raises(getattr(errors, error), match=message):
            ab.Assigner('ticket_router', split)
        with pytest.raises(getattr(errors, error), match=message):
            ab.assign('ticket_router', 'user-1', split)


def test_other_bad_assignments(ws):
    three_versions(ws)
    ws.create_version('other', template=TEMPLATE)
    with pytest.raises(errors.VersionError, match=r"'other:v1' is a version of 'other', not of 'ticket_router'"):
        ab.Assigner('ticket_router', {'v1': 50, 'other:v1': 50})
    router = ab.Assigner('ticket_router', SPLIT)
    for unit, message in [(None, 'unit_id None is a NoneType'), ('  ', 'unit_id is empty'), (1.5, 'is a float')]:
        with pytest.raises(errors.ComparisonError, match=message):
            router.arm(unit)
    with pytest.raises(errors.ComparisonError, match="experiment '' is not a usable name"):
        ab.Assigner('ticket_router', SPLIT, experiment='')


# --- logging outcomes ---------------------------------------------------------------------------------------------


def test_log_outcome_records_arm_and_version(ws):
    v1, v2, v3 = three_versions(ws)
    router = ab.Assigner('ticket_router', SPLIT)
    unit = 'user-2'
    log_outcome('ticket_router', unit, 1, traffic=SPLIT)
    log_outcome('ticket_router', unit, True, traffic=SPLIT, version=v2)  # served v2 although the split says v3
    log_outcome('ticket_router', 'user-9', 0.25, version='v2', experiment='other')
    at = datetime.datetime(2025, 1, 2, 3, 4, 5)
    first = log_outcome('ticket_router', 'user-9', 0, version=v1, at=at, event_id='evt-1')
    again = log_outcome('ticket_router', 'user-9', 0, version=v1, at=at, event_id='evt-1')  # a retry
    t = tables.ab_outcomes()
    rows = t.select(t.experiment, t.unit_id, t.arm, t.version_id, t.outcome, t.logged_at).collect().to_pandas()
    rows = rows.sort_values(['experiment', 'logged_at']).reset_index(drop=True)
    assert first == again == 'evt-1'
    assert len(rows) == 4
    assert router.arm(unit) == 'v3'
    assert rows[['experiment', 'unit_id', 'arm', 'version_id', 'outcome']].values.tolist() == [
        ['default', 'user-9', 'v1', v1.id, 0.0],
        ['default', unit, 'v3', v3.id, 1.0],
        ['default', unit, 'v3', v2.id, 1.0],
        ['other', 'user-9', 'v2', v2.id, 0.25],
    ]
    assert rows.loc[0, 'logged_at'] == at.replace(tzinfo=datetime.timezone.utc)  # naive times are UTC


def test_log_outcomes_batches_and_checks_every_row_first(ws):
    three_versions(ws)
    rows = [{'prompt': 'ticket_router', 'unit_id': u, 'outcome': 1, 'traffic': SPLIT} for u in IDS[:50]]
    rows += [{'prompt': 'ticket_router', 'unit_id': 'x', 'outcome': 0, 'version': 'v2', 'event_id': 'e'}] * 2
    assert log_outcomes(rows) == 51
    assert log_outcomes(rows[-1:]) == 0  # already stored
    base = {'prompt': 'ticket_router', 'unit_id': 'u', 'outcome': 1, 'version': 'v1'}
    bad = [
        ({**base, 'version': None}, 'ComparisonError', r'row 1: give traffic= \(the traffic passed to assign'),
        ({**base, 'outcome': 'yes'}, 'ComparisonError', r"row 1: outcome 'yes' is not a finite number; log 0/1"),
        ({**base, 'outcome': math.nan}, 'ComparisonError', r'row 1: outcome nan is not a finite number'),
        ({**base, 'unit': 'u'}, 'ComparisonError', r"row 1: unknown keys \['unit'\]; an outcome row takes prompt"),
        ({'prompt': 'ticket_router', 'outcome': 1}, 'ComparisonError', r'row 1: missing unit_id; every outcome'),
        ({**base, 'at': '2025-01-01'}, 'ComparisonError', r"row 1: at '2025-01-01' is not a datetime"),
        ({**base, 'version': 'v9'}, 'VersionError', r"row 1: version 'v9': 'ticket_router' has no version 9"),
        ('not a row', 'ComparisonError', r'row 1 is a str; pass dicts'),
    ]
    for row, error, message in bad:
        with pytest.raises(getattr(errors, error), match=message):
            log_outcomes([rows[0], row])
    assert ab_report('ticket_router').arms['events'].sum() == 51  # nothing of the refused batches was stored


# --- the report -----------------------------------------------------------------------------------------------------


def textbook_wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = p + z**2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return (centre - spread) / (1 + z**2 / n), (centre + spread) / (1 + z**2 / n)


@pytest.mark.parametrize(
    'k,n,low,high',
    [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (81, 263, 0.2553, 0.3662)],
)
def test_wilson_interval_matches_published_values(k, n, low, high):
    assert [round(x, 4) for x in wilson_interval(k, n)] == [low, high]
    assert wilson_interval(k, n) == pytest.approx(textbook_wilson(k, n), abs=1e-12)


BINARY_CASES = [
    pytest.param(300, 1000, 360, 1000, id='v3-better'),
    pytest.param(50, 400, 48, 380, id='no-difference'),
    pytest.param(3, 12, 9, 11, id='small'),
    pytest.param(0, 40, 0, 35, id='all-zero'),
    pytest.param(200, 250, 150, 250, id='v3-worse'),
]


@pytest.mark.parametrize('k1,n1,k3,n3', BINARY_CASES)
def test_binary_report_matches_scipy_and_hand_computation(ws, k1, n1, k3, n3):
    three_versions(ws)
    log_outcomes(rows_for('v1', binary(k1, n1)) + rows_for('v3', binary(k3, n3)))
    report = ab_report('ticket_router')
    assert report.test == 'fisher' and report.baseline == 'v1' and report.srm_p_value is None
    arms = report.arms.set_index('arm')
    for arm, k, n in (('v1', k1, n1), ('v3', k3, n3)):
        assert arms.loc[arm, 'units'] == arms.loc[arm, 'events'] == n
        assert arms.loc[arm, 'mean'] == pytest.approx(k / n)
        assert (arms.loc[arm, 'ci_low'], arms.loc[arm, 'ci_high']) == pytest.approx(textbook_wilson(k, n), abs=1e-9)
        assert arms.loc[arm, 'version'] == f'ticket_router:{arm}'
    row = report.comparisons.iloc[0]
    p = scipy.stats.fisher_exact([[k3, n3 - k3], [k1, n1 - k1]]).pvalue
    assert row['p_value'] == pytest.approx(p, rel=1e-9)
    assert row['diff'] == pytest.approx(k3 / n3 - k1 / n1)
    assert row['ci_low'] <= row['diff'] <= row['ci_high']
    significant = p < 0.05 and (row['ci_low'] > 0 or row['ci_high'] < 0)
    assert row['significant'] == significant
    sentence = report.verdicts[0]
    if significant:
        word = 'better' if k3 / n3 > k1 / n1 else 'worse'
        assert re.fullmatch(
            rf'v3 is {word} than v1 \([+-]\d+\.\d points, 95% CI [+-]\d+\.\d to [+-]\d+\.\d, p [<=] [\d.]+, '
            rf'n = {n1 + n3:,} units\)',
            sentence,
        ), sentence
    else:
        assert sentence.startswith(f'no detectable difference between v3 and v1 ({100 * (k3 / n3 - k1 / n1):+.1f}')
        assert f'n = {n1 + n3:,} units' in sentence


def test_newcombe_interval_for_the_difference(ws):
    three_versions(ws)
    log_outcomes(rows_for('v1', binary(56, 70)) + rows_for('v3', binary(48, 80)))
    row = ab_report('ticket_router').comparisons.iloc[0]
    # Newcombe (1998), method 10, example (c): 56/70 - 48/80 = 0.2000, 95% CI 0.0524 to 0.3339.
    assert (round(-row['diff'], 4), round(-row['ci_high'], 4), round(-row['ci_low'], 4)) == (0.2, 0.0524, 0.3339)


CONTINUOUS_CASES = [
    pytest.param([3.0, 4.5, 2.0, 5.5, 4.0, 3.5], [5.0, 6.5, 4.0, 7.5, 6.0, 5.0, 6.0], id='v3-higher'),
    pytest.param([1.2, 0.8, 1.1, 0.9, 1.0], [1.0, 1.3, 0.7, 1.1, 0.9], id='same'),
    pytest.param(list(np.linspace(0, 1, 40)), list(np.linspace(0, 1, 30) ** 2), id='different-spread'),
]


@pytest.mark.parametrize('a,b', CONTINUOUS_CASES)
def test_continuous_report_matches_scipy_welch(ws, a, b):
    three_versions(ws)
    log_outcomes(rows_for('v1', a) + rows_for('v3', b))
    report = ab_report('ticket_router')
    assert report.test == 'welch'
    arms = report.arms.set_index('arm')
    for arm, values in (('v1', a), ('v3', b)):
        low, high = scipy.stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy.stats.sem(values))
        assert arms.loc[arm, 'mean'] == pytest.approx(np.mean(values))
        assert (arms.loc[arm, 'ci_low'], arms.loc[arm, 'ci_high']) == pytest.approx((low, high))
    reference = scipy.stats.ttest_ind(b, a, equal_var=False)
    interval = reference.confidence_interval(0.95)
    row = report.comparisons.iloc[0]
    assert row['p_value'] == pytest.approx(reference.pvalue, rel=1e-9)
    assert (row['diff'], row['ci_low'], row['ci_high']) == pytest.approx(
        (np.mean(b) - np.mean(a), interval.low, interval.high)
    )
    assert ('is better than v1' in report.verdicts[0]) == bool(reference.pvalue < 0.05 and interval.low > 0)


def test_lower_is_better_and_a_chosen_baseline(ws):
    three_versions(ws)
    latency = rows_for('v1', [1.0, 1.2, 1.1, 0.9] * 10) + rows_for('v3', [2.0, 2.2, 2.1, 1.9] * 10)
    log_outcomes(latency)
    higher = ab_report('ticket_router').verdicts[0]
    assert higher == 'v3 is better than v1 (+1.000, 95% CI +0.950 to +1.050, p < 0.001, n = 80 units)'
    report = ab_report('ticket_router', baseline='v3', higher_is_better=False)
    assert report.verdicts[0].startswith('v1 is better than v3 (-1.00')
    with pytest.raises(errors.ComparisonError, match=r"baseline 'v9' is not an arm of this experiment; arms: v1, v3"):
        ab_report('ticket_router', baseline='v9')
    with pytest.raises(errors.ComparisonError, match='confidence 95 is not between 0 and 1'):
        ab_report('ticket_router', confidence=95)


def test_sample_ratio_mismatch_is_flagged_only_when_skewed(ws):
    three_versions(ws)
    # Skewed: 600 and 400 units against a planned 50/50, say v3's outcome logging drops events.
    log_outcomes(
        rows_for('v1', binary(180, 600), experiment='skewed') + rows_for('v3', binary(130, 400), experiment='skewed')
    )
    skewed = ab_report('ticket_router', experiment='skewed', traffic=SPLIT)
    assert skewed.srm_p_value == pytest.approx(scipy.stats.chisquare([600, 400], [500, 500]).pvalue)
    assert skewed.srm_p_value < 0.001
    assert skewed.verdicts[0].startswith('warning: sample ratio mismatch (p < 0.001): units per arm 600 / 400 against')
    assert list(skewed.arms['planned']) == [0.5, 0.5] and list(skewed.arms['share']) == [0.6, 0.4]
    # Fair: 2,000 units assigned by the Assigner itself.
    router = ab.Assigner('ticket_router', SPLIT, experiment='fair')
    rng = np.random.default_rng(0)
    fair = [
        {
            'prompt': 'ticket_router',
            'unit_id': u,
            'outcome': float(rng.random() < 0.3),
            'traffic': SPLIT,
            'experiment': 'fair',
        }
        for u in IDS[:2000]
    ]
    log_outcomes(fair)
    report = ab_report('ticket_router', experiment='fair', traffic=SPLIT)
    counts = Counter(router.arm(u) for u in IDS[:2000])
    assert list(report.arms['units']) == [counts['v1'], counts['v3']]
    assert report.srm_p_value == pytest.approx(scipy.stats.chisquare([counts['v1'], counts['v3']]).pvalue)
    assert report.srm_p_value > 0.001 and not any(v.startswith('warning') for v in report.verdicts)
    # A planned 70/30 split makes the same fair 50/50 data a mismatch.
    assert ab_report('ticket_router', experiment='fair', traffic={'v1': 70, 'v3': 30}).srm_p_value < 0.001


def test_units_count_once_with_their_mean_outcome(ws):
    three_versions(ws)
    rows = rows_for('v1', [1, 0, 1, 0]) + rows_for('v1', [1, 1], start=0)  # units v1-0 and v1-1 come back
    rows += rows_for('v3', [1, 1, 0, 1, 1])
    log_outcomes(rows)
    report = ab_report('ticket_router')
    arms = report.arms.set_index('arm')
    assert (arms.loc['v1', 'units'], arms.loc['v1', 'events']) == (4, 6)
    per_unit_v1 = [1.0, 0.5, 1.0, 0.0]  # v1-0: 1, 1; v1-1: 0, 1; v1-2: 1; v1-3: 0
    assert arms.loc['v1', 'mean'] == pytest.approx(np.mean(per_unit_v1))
    assert report.test == 'welch'  # v1-1's events disagree, so units' outcomes are no longer 0/1
    reference = scipy.stats.ttest_ind([1, 1, 0, 1, 1], per_unit_v1, equal_var=False)
    assert report.comparisons.iloc[0]['p_value'] == pytest.approx(reference.pvalue)
    assert 'note: 2 of 9 units had more than one event; each unit counts once' in '\n'.join(report.verdicts)
    assert "note: outcomes are 0/1 but not every unit's mean outcome is, so the test is Welch" in str(report)
    # Per unit, 'max' asks whether a unit ever had a 1 (a conversion), 'sum' totals its outcomes.
    ever = ab_report('ticket_router', per_unit='max')
    assert ever.test == 'fisher' and ever.arms.set_index('arm').loc['v1', 'mean'] == 0.75
    assert ever.comparisons.iloc[0]['p_value'] == pytest.approx(scipy.stats.fisher_exact([[4, 1], [3, 1]]).pvalue)
    total = ab_report('ticket_router', per_unit='sum')
    assert total.arms.set_index('arm').loc['v1', 'mean'] == pytest.approx(np.mean([2, 1, 1, 0]))
    assert 'each unit counts once, with its total outcome' in str(total)
    with pytest.raises(errors.ComparisonError, match="per_unit 'median' is not one of 'mean', 'sum', 'max'"):
        ab_report('ticket_router', per_unit='median')


def test_repeated_agreeing_events_keep_fisher_on_units(ws):
    three_versions(ws)
    rows = rows_for('v1', binary(3, 10)) * 3 + rows_for('v3', binary(8, 10))  # v1's units each logged thrice
    log_outcomes(rows)
    report = ab_report('ticket_router')
    assert report.test == 'fisher'
    assert report.arms.set_index('arm').loc['v1', ['units', 'events']].tolist() == [10, 30]
    p = scipy.stats.fisher_exact([[8, 2], [3, 7]]).pvalue
    assert report.comparisons.iloc[0]['p_value'] == pytest.approx(p)


def test_report_warnings_and_display(ws):
    v1, v2, v3 = three_versions(ws)
    ws.set_label(v1, 'production')
    split = {'@production': 50, 'v3': 50}
    rows = [{'prompt': 'ticket_router', 'unit_id': u, 'outcome': 1.0, 'traffic': split} for u in IDS[:40]]
    log_outcomes(rows)
    ws.set_label(v2, 'production')
    ab._assigners.clear()
    log_outcomes([{**r, 'unit_id': f'late-{i}'} for i, r in enumerate(rows)])
    log_outcomes([{'prompt': 'ticket_router', 'unit_id': IDS[0], 'outcome': 0.0, 'version': v2}])  # arm 'v2'
    report = ab_report('ticket_router', traffic={**split, '2': 1})
    text = str(report)
    assert report.arms['arm'].tolist() == ['@production', 'v3', '2', 'v2']
    assert "warning: arm '@production' served several versions (ticket_router:v1, ticket_router:v2)" in text
    assert "warning: arm 'v2' has outcomes but is not in the traffic" in text
    assert 'warning: 1 unit in more than one arm' in text
    assert 'cannot compare 2 with @production yet: 0 and' in text
    assert '<h4>Arms</h4>' in report._repr_html_() and '&#x27;@production&#x27;' in report._repr_html_()
    with pytest.raises(
        errors.ComparisonError,
        match=r"no outcomes logged for 'ticket_router' in experiment 'tone'; "
        r"experiments of 'ticket_router' with outcomes: 'default'",
    ):
        ab_report('ticket_router', experiment='tone')


def test_three_arms_note_multiple_comparisons(ws):
    three_versions(ws)
    log_outcomes(rows_for('v1', binary(30, 100)) + rows_for('v2', binary(33, 100)) + rows_for('v3', binary(45, 100)))
    report = ab_report('ticket_router', traffic={'v1': 1, 'v2': 1, 'v3': 1})
    assert report.comparisons['arm'].tolist() == ['v2', 'v3']
    assert report.verdicts[0].startswith('no detectable difference between v2 and v1 (+3.0 points')
    assert 'could detect about' in report.verdicts[0]
    assert report.verdicts[1].startswith('v3 is better than v1 (+15.0 points')
    assert report.verdicts[-1].startswith('note: 2 arms are each compared with v1')


def test_docstring_examples_run(ws):
    import doctest

    three_versions(ws)
    runner = doctest.DocTestRunner()
    for obj in (ab.Assigner, ab.assign, ab.log_outcomes, wilson_interval):
        for test in doctest.DocTestFinder().find(obj, globs=vars(ab).copy()):
            runner.run(test)
    assert runner.summarize(verbose=False) == doctest.TestResults(failed=0, attempted=4)
