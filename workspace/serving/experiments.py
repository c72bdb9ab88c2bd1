"""Running A/B experiments: the traffic (weights of units over versions) that serving follows for a prompt, its plan,
and the decision that ends it.

`traffic.py` assigns units and logs outcomes, `workspace.analysis.ab_report` reports; this module stores which
traffic is live, so that `render` and the HTTP server (in other processes) serve each unit its arm. One experiment
per prompt runs at a time. The experiments table keeps the weights in its column `split` (named before the
glossary kept *split* for train/dev/test); the API calls them `traffic`.

An experiment started with a plan (`min_units=`, or `mde=` with `baseline_rate=` or `sd=`; see
`workspace.analysis.experiment_plan`) has a minimum sample size and a decision rule fixed before any outcome:
`experiment_decision` says where it stands, and `declare_winner` moves a label to the winning arm's version, stops
the experiment and records the decision in the audit log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, cast

import pandas as pd

from workspace.analysis.experiment_plan import Decision, ExperimentDecision, Plan, decide, plan_experiment
from workspace.config import utc_now
from workspace.core.labels import set_label
from workspace.errors import ComparisonError
from workspace.serving.traffic import Assigner
from workspace.storage import audit_log, tables

__all__ = [
    'start_experiment',
    'stop_experiment',
    'list_experiments',
    'running',
    'experiment_decision',
    'declare_winner',
]


def start_experiment(
    prompt: str,
    traffic: Mapping[str, float],
    *,
    experiment: str = 'default',
    baseline: str | None = None,
    min_units: int | None = None,
    mde: float | None = None,
    baseline_rate: float | None = None,
    sd: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    decision: Decision = 'fixed',
    higher_is_better: bool = True,
) -> Assigner:
    """Serve the units of `prompt` by `traffic` from now on (a render with a `unit_id` gets the unit's arm).

    Plan it before it starts: `min_units` per arm, or the effect worth detecting, `mde`, with the baseline's rate
    (`baseline_rate`, 0/1 outcomes) or spread (`sd`), which gives the minimum sample size at `alpha` and `power`;
    `decision='fixed'` decides once every arm has its units, `'sequential'` may stop as soon as an always-valid
    test is sure (see `workspace.analysis.experiment_plan`). The baseline is the traffic's first arm unless named.
    Without a plan the experiment runs, but `declare_winner` needs an arm named by hand.
    A running experiment of the same prompt under another name is stopped first. Returns the Assigner.

    >>> start_experiment('ticket_router', {'@production': 90, 'v4': 10}, experiment='v4-canary',
    ...                  mde=0.05, baseline_rate=0.3)
    """
    assigner = Assigner(prompt, traffic, experiment=experiment)  # checks the weights and resolves the versions
    plan: Plan | None = None
    if min_units is not None or mde is not None:
        plan = plan_experiment(
            traffic,
            baseline=baseline,
            min_units=min_units,
            mde=mde,
            baseline_rate=baseline_rate,
            sd=sd,
            alpha=alpha,
            power=power,
            decision=decision,
            higher_is_better=higher_is_better,
        )
    t = tables.experiments()
    for other in running().get(prompt, []):
        if other['experiment'] != experiment:
            stop_experiment(prompt, experiment=other['experiment'])
    row = {
        'prompt': prompt,
        'experiment': experiment,
        'split': {str(k): float(v) for k, v in traffic.items()},
        'status': 'running',
        'started_at': utc_now(),
        'started_by': audit_log.actor(),
        'stopped_at': None,
        'plan': dict(plan) if plan else None,
        'decided_at': None,
        'decision': None,
    }
    tables.upsert(t, [row])
    audit_log.record(
        'experiment.started', f'{prompt}/{experiment}', after={'traffic': row['split'], 'plan': row['plan']}
    )
    return assigner


def stop_experiment(prompt: str, *, experiment: str = 'default') -> None:
    """Stop serving an experiment's arms: units get the version the reference names again."""
    t = tables.experiments()
    where = (t.prompt == prompt) & (t.experiment == experiment) & (t.status == 'running')
    if not len(t.where(where).select(t.prompt).collect()):
        raise ComparisonError(f'experiment {experiment!r} of {prompt!r} is not running; see list_experiments()')
    t.update({'status': 'stopped', 'stopped_at': utc_now()}, where=where)
    audit_log.record('experiment.stopped', f'{prompt}/{experiment}')


def running() -> dict[str, list[dict[str, Any]]]:
    """Return the running experiments by prompt: each with its name and traffic."""
    t = tables.experiments()
    found: dict[str, list[dict[str, Any]]] = {}
    for r in t.where(t.status == 'running').select(t.prompt, t.experiment, t.split).collect():
        found.setdefault(r['prompt'], []).append({'experiment': r['experiment'], 'traffic': r['split']})
    return found


def traffic_of(prompt: str, experiment: str) -> dict[str, float] | None:
    """Return the traffic an experiment served (running or stopped), or None if there is no such experiment."""
    t = tables.experiments()
    rows = t.where((t.prompt == prompt) & (t.experiment == experiment)).select(t.split).collect()
    return dict(rows[0]['split']) if len(rows) else None


def list_experiments(prompt: str | None = None) -> pd.DataFrame:
    """Return the experiments (of one prompt or all), newest first, with their traffic and status."""
    t = tables.experiments()
    query: Any = t.where(t.prompt == prompt) if prompt else t
    frame = query.order_by(t.started_at, asc=False).collect().to_pandas()
    return frame.rename(columns={'split': 'traffic'})


def _experiment(prompt: str, experiment: str) -> dict[str, Any]:
    t = tables.experiments()
    rows = t.where((t.prompt == prompt) & (t.experiment == experiment)).collect()
    if not len(rows):
        known = sorted({r['experiment'] for r in t.where(t.prompt == prompt).select(t.experiment).collect()})
        raise ComparisonError(
            f'{prompt!r} has no experiment {experiment!r}; its experiments: {", ".join(known) or "none yet"}'
        )
    return dict(rows[0])


def experiment_decision(prompt: str, *, experiment: str = 'default') -> ExperimentDecision:
    """Return where an experiment stands under its plan: still collecting (with the units it has and needs), or
    decided, with the winning arm (the baseline when no arm is better) and why.

    >>> print(experiment_decision('ticket_router', experiment='v4-canary'))
    """
    row = _experiment(prompt, experiment)
    if not row.get('plan'):
        raise ComparisonError(
            f'experiment {experiment!r} of {prompt!r} was started without a plan, so nothing decides it; read '
            f"ws.ab_report({prompt!r}, experiment={experiment!r}) and name the arm: declare_winner(..., arm='v4'), "
            'or start the next one with min_units= or mde='
        )
    return decide(prompt, experiment, row['plan'], row['split'])


def declare_winner(
    prompt: str,
    *,
    experiment: str = 'default',
    label: str = 'production',
    arm: str | None = None,
    note: str = '',
) -> ExperimentDecision:
    """End an experiment: move `label` to the winning arm's version, stop serving the experiment, and record the
    decision (winner, version, units, p-values, why) in the experiments table and the audit log.

    The winner is the plan's decision; before the plan can decide (too few units) this raises `ComparisonError`
    saying what is missing. `arm=` declares an arm by hand (a person's call, recorded as such with the data's
    verdict beside it).

    >>> declare_winner('ticket_router', experiment='v4-canary')   # moves production to v4 if it won
    """
    row = _experiment(prompt, experiment)
    traffic = dict(row['split'])
    decided = experiment_decision(prompt, experiment=experiment) if row.get('plan') else None
    if arm is None:
        if decided is None or not decided.decided:
            raise ComparisonError(
                f'{prompt}/{experiment} cannot be decided yet: {decided.reason if decided else "it has no plan"}. '
                "Let it collect, or declare an arm by hand: declare_winner(..., arm='...')"
            )
        winner, why = str(decided.winner), decided.reason
    else:
        if arm not in traffic:
            raise ComparisonError(f'arm {arm!r} is not in the traffic of {prompt}/{experiment}: {", ".join(traffic)}')
        winner = arm
        why = f'declared by hand: {arm}' + (f' (the data: {decided.reason})' if decided else ' (no plan)')
    version = Assigner(prompt, traffic, experiment=experiment).versions[winner]
    reason = f'{prompt}/{experiment}: {why}' + (f'; {note}' if note else '')
    previous = set_label(version, label, note=reason, by=audit_log.actor())
    outcome = {
        'winner': winner,
        'version_id': version.id,
        'label': label,
        'previous_id': previous,
        'by_hand': arm is not None,
        'units': decided.units if decided else None,
        'p_values': decided.p_values if decided else None,
        'reason': reason,
    }
    t = tables.experiments()
    where = (t.prompt == prompt) & (t.experiment == experiment)
    changes: dict[str, Any] = {'decided_at': utc_now(), 'decision': outcome}
    if row['status'] == 'running':
        changes.update(status='stopped', stopped_at=utc_now())
    t.update(changes, where=where)
    audit_log.record(
        'experiment.decided', f'{prompt}/{experiment}', before={'label': previous}, after=outcome, note=reason
    )
    if decided is None:
        return ExperimentDecision(prompt, experiment, cast(Plan, {}), 'decided', winner, reason)
    return dataclasses.replace(decided, winner=winner, reason=reason, status='decided')
