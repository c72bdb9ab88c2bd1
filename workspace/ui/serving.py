"""The serving pane of the comparison view: how each compared version does when served to applications.

A pure render function over the table `workspace.analysis.serving_stats.serving_stats` returns (the comparison
state reads it); it reads nothing itself.
"""

from __future__ import annotations

import html
import math
from typing import Any

import pandas as pd

from workspace.ui.views import STYLESHEET

__all__ = ['render_serving_pane']


def _number(value: Any, digits: int = 0, suffix: str = '') -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<span class="pw-muted">–</span>'
    return f'{value:,.{digits}f}{suffix}'


def _rules(counts: Any) -> str:
    if not isinstance(counts, dict) or not counts:
        return '<span class="pw-muted">none</span>'
    return ', '.join(f'{html.escape(rule)} {n:,}' for rule, n in counts.items())


def render_serving_pane(stats: pd.DataFrame, *, baseline: str | None = None) -> str:
    """Return the HTML of the serving pane: one row per version with requests, ok / blocked / errors, latency
    p50 and p95, violations per rule and the outcome applications logged (units and mean).

    >>> 'not served yet' in render_serving_pane(pd.DataFrame(columns=['version_id', 'requests']))
    True
    """
    served = stats[stats['requests'].fillna(0) > 0] if len(stats) else stats
    if served.empty:
        body = (
            '<p>These versions are not served yet. Serve one with <code>ws.render</code>, <code>ws.complete</code> '
            'or the HTTP API; each call is logged as an execution and counted here.</p>'
        )
        return f'{STYLESHEET}<div class="pw-view pw-serving">{body}</div>'
    head = [
        'version',
        'requests',
        'ok',
        'blocked',
        'errors',
        'p50 ms',
        'p95 ms',
        'outcome units',
        'outcome mean',
    ]
    rows = []
    for r in stats.itertuples():
        name = html.escape(str(r.version_id)) + (
            ' <span class="pw-tag">baseline</span>' if r.version_id == baseline else ''
        )
        cells = [
            name,
            _number(r.requests),
            _number(r.ok),
            _number(r.blocked),
            _number(r.errors),
            _number(r.latency_p50_ms, 1),
            _number(r.latency_p95_ms, 1),
            _number(r.outcome_units),
            _number(r.outcome_mean, 3),
        ]
        rules = f'<td style="text-align:left;white-space:normal;min-width:14em">{_rules(r.violations_by_rule)}</td>'
        rows.append('<tr>' + ''.join(f'<td>{c}</td>' for c in cells) + rules + '</tr>')
    table = (
        '<div class="pw-scroll"><table class="pw-table"><tr>'
        + ''.join(f'<th>{h}</th>' for h in head)
        + '<th style="text-align:left">violations by rule</th></tr>'
        + ''.join(rows)
        + '</table></div>'
    )
    note = (
        '<p class="pw-sub">Served calls (executions) and the outcomes applications logged for them; the evaluation '
        'runs are in the other tabs.</p>'
    )
    return f'{STYLESHEET}<div class="pw-view pw-serving">{table}{note}</div>'
