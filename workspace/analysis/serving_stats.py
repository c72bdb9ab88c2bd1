"""The serving side in numbers: executions as a table, and per-version serving statistics.

An execution is one render or completion served to an application (`workspace.serving.serve` logs it, with its
version, latency, tokens and the rules that fired); an outcome is what the application reported afterwards
(`log_execution_outcome`, `log_outcome`). This module reads both for notebooks, the comparison view and the HTTP
API: `executions(...)` lists them, `serving_stats(...)` sums them up per version.
"""

from __future__ import annotations

import datetime
import functools
import operator
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from workspace.core.versions import get_version
from workspace.errors import WorkspaceError
from workspace.storage import tables
from workspace.storage.audit_log import parse_since

__all__ = ['executions', 'serving_stats', 'STATS_COLUMNS']

When = datetime.datetime | datetime.timedelta | str

#: The columns of `serving_stats`, in order.
STATS_COLUMNS = [
    'version_id',
    'prompt',
    'requests',
    'renders',
    'completions',
    'ok',
    'blocked',
    'errors',
    'error_rate',
    'latency_p50_ms',
    'latency_p95_ms',
    'latency_p99_ms',
    'mean_prompt_tokens',
    'mean_completion_tokens',
    'reused_share',
    'with_violations',
    'violations',
    'violations_by_rule',
    'outcome_units',
    'outcome_events',
    'outcome_mean',
    'first_at',
    'last_at',
]

_EXECUTION_COLUMNS = [
    'at',
    'execution_id',
    'kind',
    'prompt',
    'version_id',
    'ref',
    'unit_id',
    'experiment',
    'arm',
    'outcome',
    'latency_ms',
    'prompt_tokens',
    'completion_tokens',
    'reused',
    'rules',
    'violations',
    'error',
    'caller',
]


def _version_ids(versions: Sequence[Any] | None) -> list[str] | None:
    return None if versions is None else [get_version(v).id for v in versions]


def _read(
    table: Any,
    *,
    time_column: str,
    prompt: str | None,
    version_ids: list[str] | None,
    since: When | None,
    until: When | None,
    extra: list[Any] | None = None,
) -> Any:
    """Return a query on `table` filtered by prompt, versions and time (Pixeltable takes one where())."""
    conditions = list(extra or [])
    if prompt is not None:
        conditions.append(table.prompt == prompt)
    if version_ids is not None:
        conditions.append(table.version_id.isin(version_ids))
    if since is not None:
        conditions.append(table[time_column] >= parse_since(since))
    if until is not None:
        conditions.append(table[time_column] < parse_since(until))
    return table.where(functools.reduce(operator.and_, conditions)) if conditions else table


def executions(
    prompt: str | None = None,
    *,
    versions: Sequence[Any] | None = None,
    since: When | None = None,
    until: When | None = None,
    kind: Literal['render', 'complete'] | None = None,
    outcome: Literal['ok', 'blocked', 'error'] | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Return served executions, newest first: when, id, kind, prompt, version, the reference asked for, unit,
    experiment and arm, outcome (ok, blocked, error), latency in ms, tokens, whether the answer was reused, the
    rules that fired and their violations, the error and the caller.

    `since` and `until` take a datetime, a timedelta or an age ('30m', '2h', '7d'); `versions` keeps some versions.
    Executions still buffered by a running server are written within a second.

    >>> executions('ticket_router', since='1d', outcome='blocked')
    """
    if kind is not None and kind not in ('render', 'complete'):
        raise WorkspaceError(f"kind={kind!r} is not an execution kind; use 'render' or 'complete'")
    if outcome is not None and outcome not in ('ok', 'blocked', 'error'):
        raise WorkspaceError(f"outcome={outcome!r} is not an execution outcome; use 'ok', 'blocked' or 'error'")
    t = tables.open_table(tables.EXECUTIONS)  # nothing served yet: no table (and reading makes none)
    if t is None:
        return pd.DataFrame(columns=_EXECUTION_COLUMNS)
    extra = [t.kind == kind] if kind else []
    extra += [t.outcome == outcome] if outcome else []
    query = _read(
        t, time_column='at', prompt=prompt, version_ids=_version_ids(versions), since=since, until=until, extra=extra
    )
    query = query.order_by(t.at, asc=False)
    if limit is not None:
        query = query.limit(int(limit))
    frame = query.collect().to_pandas()
    if frame.empty:
        return pd.DataFrame(columns=_EXECUTION_COLUMNS)
    frame['latency_ms'] = frame['latency_s'] * 1000.0
    frame['rules'] = [sorted({v['rule'] for v in found or []}) for found in frame['violations']]
    return frame.reindex(columns=_EXECUTION_COLUMNS).reset_index(drop=True)


def _percentile(values: pd.Series, q: float) -> float:
    clean = values.dropna()
    return float(np.percentile(clean, q)) if len(clean) else float('nan')


def _by_rule(found: pd.Series) -> dict[str, int]:
    counts: dict[str, int] = {}
    for violations in found:
        for v in violations or []:
            counts[v['rule']] = counts.get(v['rule'], 0) + 1
    return dict(sorted(counts.items()))


def _version_row(version_id: str, rows: pd.DataFrame) -> dict[str, Any]:
    latency = rows['latency_s'] * 1000.0
    completions = rows[rows['kind'] == 'complete']
    n = len(rows)
    return {
        'version_id': version_id,
        'prompt': rows['prompt'].iloc[0],
        'requests': n,
        'renders': int((rows['kind'] == 'render').sum()),
        'completions': len(completions),
        'ok': int((rows['outcome'] == 'ok').sum()),
        'blocked': int((rows['outcome'] == 'blocked').sum()),
        'errors': int((rows['outcome'] == 'error').sum()),
        'error_rate': float((rows['outcome'] == 'error').mean()),
        'latency_p50_ms': _percentile(latency, 50),
        'latency_p95_ms': _percentile(latency, 95),
        'latency_p99_ms': _percentile(latency, 99),
        'mean_prompt_tokens': float(completions['prompt_tokens'].mean()) if len(completions) else float('nan'),
        'mean_completion_tokens': float(completions['completion_tokens'].mean()) if len(completions) else float('nan'),
        'reused_share': float(completions['reused'].fillna(False).astype(bool).mean())
        if len(completions)
        else float('nan'),
        'with_violations': int(sum(bool(v) for v in rows['violations'])),
        'violations': int(sum(len(v or []) for v in rows['violations'])),
        'violations_by_rule': _by_rule(rows['violations']),
        'first_at': rows['at'].min(),
        'last_at': rows['at'].max(),
    }


def _outcomes(
    prompt: str | None, version_ids: list[str] | None, since: When | None, until: When | None
) -> pd.DataFrame:
    """Return per version: units with an outcome, outcome events, and the mean of each unit's mean outcome."""
    t = tables.open_table(tables.AB_OUTCOMES)
    if t is None:  # no outcome logged yet
        return pd.DataFrame(columns=['outcome_units', 'outcome_events', 'outcome_mean'])
    query = _read(t, time_column='logged_at', prompt=prompt, version_ids=version_ids, since=since, until=until)
    frame = query.select(t.version_id, t.unit_id, t.outcome).collect().to_pandas()
    if frame.empty:
        return pd.DataFrame(columns=['outcome_units', 'outcome_events', 'outcome_mean'])
    units = frame.groupby(['version_id', 'unit_id'])['outcome'].agg(['mean', 'size']).reset_index()
    return units.groupby('version_id').agg(
        outcome_units=('unit_id', 'size'), outcome_events=('size', 'sum'), outcome_mean=('mean', 'mean')
    )


def _served(
    t: Any, prompt: str | None, version_ids: list[str] | None, since: When | None, until: When | None
) -> pd.DataFrame:
    """Return the executions a serving summary reads (those with a version)."""
    query = _read(t, time_column='at', prompt=prompt, version_ids=version_ids, since=since, until=until)
    columns = [t.at, t.kind, t.prompt, t.version_id, t.outcome, t.latency_s, t.prompt_tokens, t.completion_tokens]
    frame = query.select(*columns, t.reused, t.violations).collect().to_pandas()
    return frame[frame['version_id'].notna()] if len(frame) else frame


def serving_stats(
    prompt: str | None = None,
    *,
    versions: Sequence[Any] | None = None,
    since: When | None = None,
    until: When | None = None,
) -> pd.DataFrame:
    """Return one row per served version: requests (renders and completions), outcomes ok / blocked / error and
    the error rate, latency percentiles in ms (p50, p95, p99), mean tokens and the share of answers reused
    (completions), executions with a rule violation and the violations per rule, and the outcomes applications
    logged (units, events, the mean of each unit's mean outcome); first and last served.

    Each unit counts once in `outcome_mean`, as in `ab_report`. `since`/`until` take a datetime, a timedelta or
    an age ('7d'). Versions never served are left out, unless named in `versions` (then with zero requests).

    >>> serving_stats('ticket_router', since='7d')[['version_id', 'requests', 'latency_p95_ms', 'outcome_mean']]
    """
    version_ids = _version_ids(versions)
    t = tables.open_table(tables.EXECUTIONS)
    frame = _served(t, prompt, version_ids, since, until) if t is not None else pd.DataFrame(columns=['version_id'])
    rows = [_version_row(v, group) for v, group in frame.groupby('version_id', sort=True)] if len(frame) else []
    stats = pd.DataFrame(rows, columns=[c for c in STATS_COLUMNS if not c.startswith('outcome_')])
    for missing in sorted(set(version_ids or []) - set(stats['version_id'])):
        empty = {'version_id': missing, 'prompt': missing.rsplit(':', 1)[0], 'requests': 0, 'renders': 0}
        stats.loc[len(stats)] = {**{c: np.nan for c in stats.columns}, **empty, 'violations_by_rule': {}}
    outcomes = _outcomes(prompt, version_ids, since, until)
    stats = stats.merge(outcomes, left_on='version_id', right_index=True, how='left')
    stats[['outcome_units', 'outcome_events']] = stats[['outcome_units', 'outcome_events']].fillna(0).astype(int)
    return stats.reindex(columns=STATS_COLUMNS).reset_index(drop=True)
