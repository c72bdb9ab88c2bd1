"""Experiments that serving follows, planned before they start and ended by a decision: a minimum sample size, a
fixed-horizon or sequential decision, and `declare_winner`, which moves the label and is audited."""

from __future__ import annotations

import numpy as np
import pytest

from workspace.errors import ComparisonError
from workspace.serving.experiments import declare_winner, experiment_decision, list_experiments, start_experiment
from workspace.serving.traffic import Assigner, log_outcomes

TRAFFIC = {'@production': 50, 'v3': 50}


def _log(prompt, experiment, units, rates, seed=0):
    """Log one 0/1 outcome per unit, drawn at its arm's rate."""
    rng = np.random.default_rng(seed)
    assigner = Assigner(prompt, TRAFFIC, experiment=experiment)
    rows = []
    for i in range(units):
        unit = f'{experiment}-u{i}'
        arm = assigner.arm(unit)
        rows.append(
            {
                'prompt': prompt,
                'unit_id': unit,
                'outcome': int(rng.random() < rates[arm]),
                'traffic': TRAFFIC,
                'experiment': experiment,
            }
        )
    log_outcomes(rows)


def test_a_fixed_horizon_experiment_is_decided_at_its_planned_size_and_moves_the_label(scripted_versions):
    import workspace as ws

    _, v1, v2, v3, _ = scripted_versions
    ws.set_label(v2, 'production')
    start_experiment('router', TRAFFIC, experiment='fixed', min_units=120)
    plan = list_experiments('router').set_index('experiment').loc['fixed', 'plan']
    assert plan == {
        'baseline': '@production',
        'min_units': 120,
        'mde': None,
        'alpha': 0.05,
        'power': 0.8,
        'decision': 'fixed',
        'higher_is_better': True,
    }

    _log('router', 'fixed', 100, {'@production': 0.2, 'v3': 0.6})  # a clear difference, but before the horizon
    early = experiment_decision('router', experiment='fixed')
    assert early.status == 'collecting' and 'keep collecting' in early.reason and early.winner is None
    with pytest.raises(ComparisonError, match=r'router/fixed cannot be decided yet: keep collecting.*arm='):
        declare_winner('router', experiment='fixed')
    assert ws.get_version('router@production').id == v2.id  # nothing moved

    _log('router', 'fixed', 320, {'@production': 0.2, 'v3': 0.6}, seed=1)
    decided = experiment_decision('router', experiment='fixed')
    assert decided.status == 'decided' and decided.winner == 'v3' and min(decided.units.values()) >= 120
    assert decided.p_values['v3'] < 0.001 and decided.report is not None

    result = declare_winner('router', experiment='fixed')
    assert result.winner == 'v3' and ws.get_version('router@production').id == v3.id
    row = list_experiments('router').set_index('experiment').loc['fixed']
    assert (
        row['status'] == 'stopped'
        and row['decision']['version_id'] == v3.id
        and row['decision']['previous_id'] == v2.id
    )
    audit = ws.audit(kind='experiment.decided')
    assert list(audit['subject']) == ['router/fixed'] and audit.iloc[0]['after']['winner'] == 'v3'
    moves = ws.audit(kind='label.moved', subject='router@production')
    assert moves.iloc[0]['after'] == v3.id
    from workspace.core.labels import label_history

    assert 'v3 wins: better than @production' in label_history('router', 'production').iloc[0]['note']


def test_a_sequential_experiment_stops_early_and_the_baseline_can_win(scripted_versions):
    import workspace as ws

    _, _, v2, v3, _ = scripted_versions
    ws.set_label(v2, 'production')
    start_experiment('router', TRAFFIC, experiment='seq', mde=0.05, baseline_rate=0.3, decision='sequential')
    plan = list_experiments('router').set_index('experiment').loc['seq', 'plan']
    assert plan['min_units'] > 1000 and plan['decision'] == 'sequential'
    _log('router', 'seq', 400, {'@production': 0.2, 'v3': 0.6})
    decided = experiment_decision('router', experiment='seq')
    assert decided.status == 'decided' and decided.winner == 'v3' and max(decided.units.values()) < plan['min_units']

    start_experiment('router', TRAFFIC, experiment='same', min_units=60)  # stops 'seq': one experiment per prompt
    _log('router', 'same', 200, {'@production': 0.5, 'v3': 0.5}, seed=2)
    kept = declare_winner('router', experiment='same', label='staging')
    assert kept.winner == '@production' and '@production stays' in kept.reason
    assert ws.get_version('router@staging').id == v2.id


def test_an_experiment_without_a_plan_is_declared_by_hand(scripted_versions):
    import workspace as ws

    _, v1, v2, v3, _ = scripted_versions
    ws.set_label(v2, 'production')
    start_experiment('router', TRAFFIC, experiment='adhoc')
    with pytest.raises(ComparisonError, match=r'started without a plan.*ab_report'):
        experiment_decision('router', experiment='adhoc')
    with pytest.raises(ComparisonError, match=r"arm 'v9' is not in the traffic"):
        declare_winner('router', experiment='adhoc', arm='v9')
    result = declare_winner('router', experiment='adhoc', arm='v3', note='support asked for it')
    assert ws.get_version('router@production').id == v3.id
    assert 'declared by hand: v3 (no plan); support asked for it' in result.reason
    assert ws.audit(kind='experiment.decided').iloc[0]['after']['by_hand'] is True
    with pytest.raises(ComparisonError, match=r"'router' has no experiment 'nope'; its experiments: adhoc"):
        declare_winner('router', experiment='nope')
