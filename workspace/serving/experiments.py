"""Running A/B experiments: the traffic (weights of units over versions) that serving follows for a prompt.

`traffic.py` assigns units and logs outcomes, `workspace.analysis.ab_report` reports; this module stores which
traffic is live, so that `render` and the HTTP server (in other processes) serve each unit its arm. One experiment
per prompt runs at a time. The experiments table keeps the weights in its column `split` (named before the
glossary kept *split* for train/dev/test); the API calls them `traffic`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from workspace.config import utc_now
from workspace.errors import ComparisonError
from workspace.serving.traffic import Assigner
from workspace.storage import audit_log, tables

__all__ = ['start_experiment', 'stop_experiment', 'list_experiments', 'running']


def start_experiment(prompt: str, traffic: Mapping[str, float], *, experiment: str = 'default') -> Assigner:
    """Serve the units of `prompt` by `traffic` from now on (a render with a `unit_id` gets the unit's arm).

    A running experiment of the same prompt under another name is stopped first. Returns the Assigner.

    >>> start_experiment('ticket_router', {'@production': 90, 'v4': 10}, experiment='v4-canary')
    """
    assigner = Assigner(prompt, traffic, experiment=experiment)  # checks the weights and resolves the versions
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
    }
    tables.upsert(t, [row])
    audit_log.record('experiment.started', f'{prompt}/{experiment}', after={'traffic': row['split']})
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
