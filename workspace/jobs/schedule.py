"""Scheduled evaluations: evaluate the version a label points at, record the result, flag regressions.

Each call appends one row to `prompt_workspace/scheduled_runs` (parameters, version, metrics, calls, duration,
status). A regression is a main score more than `threshold` below the previous run with the same parameters.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pandas as pd

from workspace.config import utc_now
from workspace.core.datasets import get_dataset
from workspace.core.evaluate import evaluate
from workspace.core.runs import main_score_name
from workspace.core.versions import edit, get_version
from workspace.display.frames import shown
from workspace.display.results import format_usd
from workspace.errors import RegressionError
from workspace.storage import tables

__all__ = ['ScheduledEval', 'scheduled_eval', 'scheduled_history']


@dataclass(frozen=True)
class ScheduledEval:
    """The outcome of one scheduled evaluation."""

    run_id: str
    parameters: dict[str, Any]
    version_id: str
    metric: str
    score: float
    previous_score: float | None
    regression: bool
    calls: int
    reused: int
    errors: int
    duration_s: float
    metrics: dict[str, Any]
    cost_usd: float | None = None

    @property
    def status(self) -> str:
        return 'regression' if self.regression else 'ok'

    def __str__(self) -> str:
        before = f'{self.previous_score:.3f}' if self.previous_score is not None else 'none'
        verdict = (
            f'REGRESSION: {self.metric} fell from {before} to {self.score:.3f} '
            f'(threshold {self.parameters["threshold"]:.3f})'
            if self.regression
            else 'no regression'
        )
        return (
            f'{self.version_id} on {self.parameters["dataset"]}/{self.parameters["split"]}: {self.metric} '
            f'{self.score:.3f} (previous {before}); {self.calls} model calls, {self.reused} reused, {self.errors} '
            f'errors, {self.duration_s:.1f} s, cost {format_usd(self.cost_usd)}; {verdict}'
        )

    def check(self) -> None:
        """Raise RegressionError if this run flagged a regression (a scheduled notebook ends with this)."""
        if self.regression:
            raise RegressionError(str(self))


def _key(parameters: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:16]


def _previous(key: str) -> float | None:
    t = tables.scheduled_runs()
    rows = (
        t.where((t.params_key == key) & (t.status != 'failed'))
        .select(t.main_score)
        .order_by(t.started_at, asc=False)
        .limit(1)
        .collect()
    )
    return rows[0]['main_score'] if len(rows) else None


def scheduled_eval(
    prompt: str,
    *,
    label: str = 'production',
    dataset: str = 'support_tickets',
    split: str | None = 'dev',
    model: str | None = None,
    threshold: float = 0.02,
    progress: bool = False,
) -> ScheduledEval:
    """Evaluate `prompt@label` on a dataset split (optionally on another model), record it, and compare with the
    previous run of the same parameters. A failure is recorded with its error and raised again.

    >>> result = scheduled_eval('ticket_router', label='production', dataset='support_tickets', split='dev')
    >>> result.check()   # raises RegressionError if the main score dropped by more than the threshold
    """
    parameters = {
        'prompt': prompt,
        'label': label,
        'dataset': dataset,
        'split': split,
        'model': model,
        'threshold': threshold,
    }
    key, run_id, started, clock = _key(parameters), uuid.uuid4().hex[:12], utc_now(), time.perf_counter()
    row: dict[str, Any] = {'run_id': run_id, 'started_at': started, 'parameters': parameters, 'params_key': key}
    try:
        version = get_version(f'{prompt}@{label}')
        if model and model != version.model:
            version = edit(version, model=model, note=f'{prompt}@{label} ({version.id}) on {model}, scheduled')
        ds = get_dataset(dataset)
        run = evaluate(version, ds, split, progress=progress)
        metric = main_score_name(ds.task)
        summary = run.summary()
        score = float(summary.metrics[metric])
    except Exception as e:
        tables.scheduled_runs().insert(
            [
                {
                    **row,
                    'status': 'failed',
                    'error': f'{type(e).__name__}: {e}',
                    'duration_s': time.perf_counter() - clock,
                }
            ]
        )
        raise
    previous = _previous(key)
    regression = previous is not None and score < previous - threshold
    result = ScheduledEval(
        run_id=run_id,
        parameters=parameters,
        version_id=version.id,
        metric=metric,
        score=score,
        previous_score=previous,
        regression=regression,
        calls=run.calls,
        reused=run.reused,
        errors=run.errors,
        duration_s=time.perf_counter() - clock,
        metrics=summary.metrics,
        cost_usd=summary.metrics.get('cost_usd'),
    )
    tables.scheduled_runs().insert(
        [
            {
                **row,
                'version_id': version.id,
                'eval_run_id': run.run_id,
                'dataset_version': run.dataset_version,
                'metrics': summary.metrics,
                'main_score': score,
                'previous_score': previous,
                'calls': run.calls,
                'reused': run.reused,
                'duration_s': result.duration_s,
                'status': result.status,
                'error': None,
                'cost_usd': result.cost_usd,
            }
        ]
    )
    return result


def scheduled_history(prompt: str | None = None) -> pd.DataFrame:
    """Return past scheduled evaluations, newest first."""
    t = tables.scheduled_runs()
    query: Any = t.where(t.parameters['prompt'] == prompt) if prompt else t
    return shown(
        query.select(
            t.started_at,
            t.status,
            t.version_id,
            t.main_score,
            t.previous_score,
            t.calls,
            t.reused,
            t.duration_s,
            t.cost_usd,
            t.parameters,
            t.error,
            t.run_id,
        )
        .order_by(t.started_at, asc=False)
        .collect()
        .to_pandas()
    )
