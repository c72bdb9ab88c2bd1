"""Pure render functions for the deeper evaluation: samples, judge agreement, models side by side with cost, and
changelogs. Data in, an HTML fragment out; the comparison view, the report and notebooks show these, and tests
check them without a kernel or a browser."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import pandas as pd

from workspace.display.formats import count, milliseconds, money, percent, score, tokens

__all__ = [
    'render_sample_report',
    'render_samples_pane',
    'render_agreement',
    'render_cost_quality',
    'render_changelog',
    'render_record',
    'format_usd',
]

_STYLE = """
<style>
.pw-eval { font-family: system-ui, sans-serif; font-size: 13px; }
.pw-eval table { border-collapse: collapse; margin: 6px 0; }
.pw-eval th, .pw-eval td { border-bottom: 1px solid #e5e7eb; padding: 3px 8px; text-align: right; }
.pw-eval th:first-child, .pw-eval td:first-child { text-align: left; }
.pw-eval table.pw-record td { text-align: left; vertical-align: top; }
.pw-eval table.pw-record td:first-child { color: #59636e; white-space: nowrap; padding-right: 16px; }
.pw-eval .pw-ci { color: #6b7280; font-size: 11px; }
.pw-eval .pw-unstable { color: #b45309; }
.pw-eval .pw-good { color: #1a7f37; } .pw-eval .pw-bad { color: #c62828; }
.pw-eval .pw-note { background: #fff6db; border-left: 4px solid #e0a800; padding: 4px 8px; margin: 4px 0; }
.pw-eval blockquote { margin: 4px 0; padding: 4px 10px; border-left: 3px solid #93c5fd; background: #f5f9ff; }
</style>
"""


def _wrap(body: str, css_class: str) -> str:
    return f'{_STYLE}<div class="pw-eval {css_class}">{body}</div>'


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _ci(value: float, low: float, high: float, kind: str = 'percent') -> str:
    shown = percent if kind == 'percent' else score
    if not shown(value):  # not measurable here (no verdict of one kind, say): the notes say why
        return '<span class="pw-ci">n/a</span>'
    return f'{shown(value)} <span class="pw-ci">[{shown(low)}, {shown(high)}]</span>'


def format_usd(value: float | None) -> str:
    """Return dollars for people (the one formatter's `money`): n/a when unknown, $0 for free, else enough digits
    to see a per-row cost.

    >>> format_usd(None), format_usd(0.0), format_usd(0.0000171), format_usd(0.25), format_usd(12.5)
    ('n/a', '$0', '$0.0000171', '$0.25', '$12.50')
    """
    return money(value)


def render_record(title: str, fields: Sequence[tuple[str, Any]], *, notes: Sequence[str] = ()) -> str:
    """Render a result object as a titled two-column table of (name, value) with notes under it: what every
    result object of the workspace shows in a notebook. Values are shown as given (format them with
    `workspace.display.formats` first); None and '' rows are left out; nested values read as one line.

    >>> render_record('IngestReport log.jsonl', [('lines', '1,200'), ('new prompts', '30')]).count('<tr>')
    2
    """
    from workspace.display.formats import readable

    rows = ''.join(
        f'<tr><td>{_esc(name)}</td><td>{_esc(readable(value) if isinstance(value, (dict, list, tuple)) else value)}'
        '</td></tr>'
        for name, value in fields
        if value is not None and value != ''
    )
    body = f'<h4>{_esc(title)}</h4><table class="pw-record">{rows}</table>'
    body += ''.join(f'<div class="pw-note">{_esc(n)}</div>' for n in notes)
    return _wrap(body, 'pw-record-view')


def render_sample_report(report: Any, *, limit: int = 50) -> str:
    """Render a `SampleReport`: pass@1, pass@k, pass^k and agreement with intervals, then the unstable rows."""
    head = ''.join(f'<tr><td>{_esc(n)}</td><td>{_ci(*v)}</td></tr>' for n, v in report.metrics.items())
    pct = f'{report.confidence * 100:.3g}%'
    parts = [
        f'<h4>{_esc(report.version_id)}: {report.k} samples per row, {len(report.rows)} rows, '
        f'<span class="pw-unstable">{len(report.unstable)} unstable</span></h4>',
        f'<table class="pw-sample-metrics"><tr><th>metric</th><th>mean [{pct} CI]</th></tr>{head}</table>',
    ]
    unstable = report.rows[report.rows['unstable']].head(limit)
    if len(unstable):
        cells = ''.join(
            f'<tr><td>{_esc(r.example_id)}</td><td>{r.passed} of {r.samples}</td><td>{percent(r.agreement)}</td>'
            f'<td>{_esc(r.modal_prediction)}</td></tr>'
            for r in unstable.itertuples()
        )
        parts.append(
            '<p>Unstable rows: some samples pass, some fail.</p><table class="pw-unstable-rows"><tr><th>example</th>'
            f'<th>passing</th><th>agreement</th><th>most common prediction</th></tr>{cells}</table>'
        )
    parts += [f'<div class="pw-note">{_esc(n)}</div>' for n in report.notes]
    return _wrap(''.join(parts), 'pw-samples')


def render_samples_pane(reports: Sequence[Any]) -> str:
    """Render the samples of several runs one under the other (a comparison pane), or say that none has any."""
    if not reports:
        return _wrap(
            '<p>No run here has samples. Evaluate with <code>ws.evaluate(version, dataset, split, samples=5)</code> '
            '(the version must sample: temperature above 0).</p>',
            'pw-samples',
        )
    return ''.join(render_sample_report(r) for r in reports)


def render_agreement(agreement: Any) -> str:
    """Render a judge's agreement with people: the 2x2 table, Cohen's kappa, TPR and TNR with intervals."""
    t = agreement.table
    pct = f'{agreement.confidence * 100:.3g}%'
    rows = [
        ("Cohen's kappa", agreement.kappa, 'score'),
        ('true-positive rate (judge passes what people pass)', agreement.tpr, 'percent'),
        ('true-negative rate (judge fails what people fail)', agreement.tnr, 'percent'),
        ('accuracy', agreement.accuracy, 'percent'),
    ]
    stats = ''.join(f'<tr><td>{_esc(n)}</td><td>{_ci(v[0], v[1], v[2], kind=k)}</td></tr>' for n, v, k in rows)
    table = (
        '<table class="pw-agreement-table"><tr><th></th><th>judge pass</th><th>judge fail</th></tr>'
        f'<tr><td>people pass</td><td>{t["tp"]}</td><td>{t["fn"]}</td></tr>'
        f'<tr><td>people fail</td><td>{t["fp"]}</td><td>{t["tn"]}</td></tr></table>'
    )
    body = (
        f'<h4>{_esc(agreement.judge_id)} against {agreement.n} human verdicts</h4>{table}'
        f'<table class="pw-agreement"><tr><th>statistic</th><th>value [{pct} CI]</th></tr>{stats}</table>'
    )
    body += ''.join(f'<div class="pw-note">{_esc(n)}</div>' for n in agreement.notes)
    return _wrap(body, 'pw-agreement-view')


def render_cost_quality(table: pd.DataFrame, *, metric: str, title: str = 'Cost and quality') -> str:
    """Render models side by side: one row per version with model, quality, latency, tokens and cost, and a
    scatter chart of quality against cost per row (log scale when costs span orders of magnitude; unknown and
    zero costs drawn at the left edge and labelled)."""
    head = ['version', 'model', metric, 'mean latency', 'mean tokens', 'cost per row', 'cost of run', 'errors']
    cells = []
    for version, row in table.iterrows():
        cells.append(
            [
                _esc(version),
                _esc(row['model']),
                percent(row[metric]),
                milliseconds(row['mean_latency_s']),
                tokens(row['mean_tokens']),
                money(row.get('cost_per_row_usd')),
                money(row.get('cost_usd')),
                count(row['errors']),
            ]
        )
    rows = ''.join('<tr>' + ''.join(f'<td>{c}</td>' for c in r) + '</tr>' for r in cells)
    grid = '<table class="pw-cost-table"><tr>' + ''.join(f'<th>{_esc(h)}</th>' for h in head) + f'</tr>{rows}</table>'
    return _wrap(f'<h4>{_esc(title)}</h4>{_cost_chart(table, metric)}{grid}', 'pw-cost-quality')


def _cost_chart(table: pd.DataFrame, metric: str) -> str:
    import base64
    import io

    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib import transforms
    from matplotlib.ticker import FuncFormatter

    costs = pd.to_numeric(table['cost_per_row_usd'], errors='coerce') * 1000  # per 1,000 rows: readable ticks
    known = costs[costs > 0]
    log = bool(len(known)) and float(known.max()) / float(known.min()) > 50
    # Free runs sit at $0 on a linear axis; on a log axis (costs spanning orders of magnitude) there is no 0, so
    # they sit a decade below the cheapest paid run, on a tick labelled "free". Unknown costs sit beside them.
    floor = float(known.min()) / 10 if log else 0.0
    x = costs.fillna(floor).clip(lower=floor)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    labels = []
    # Versions at the same cost and quality (the same model and answers) are drawn side by side, a marker apart,
    # so none hides another.
    spot = [(round(float(xv), 12), round(float(yv), 6)) for xv, yv in zip(x, table[metric])]
    for version, xv, yv, cost, where in zip(table.index, x, table[metric], costs, spot):
        free, unknown = cost == 0, pd.isna(cost)
        color = '#9ca3af' if unknown else '#16a34a' if free else '#2563eb'
        twins = [i for i, other in enumerate(spot) if other == where]
        shift = (twins.index(list(table.index).index(version)) - (len(twins) - 1) / 2) * 10.0  # points
        nudged = transforms.offset_copy(ax.transData, fig=fig, x=shift, y=0, units='points')
        ax.scatter([xv], [yv], s=60, color=color, marker='x' if unknown else 'o', zorder=3, transform=nudged)
        tag = ' (free)' if free else ' (cost n/a)' if unknown else ''
        right = (len(twins) - 1) / 2 * 10.0 * fig.dpi / 72  # past the rightmost of the markers side by side
        labels.append(
            (
                float(yv),
                float(xv),
                f'{str(version).rpartition(":")[2] or version} · {table.loc[version, "model"]}{tag}',
                right,
            )
        )
    if log:
        ax.set_xscale('log')
        ax.set_xlim(left=floor / 2, right=float(known.max()) * 3)
        decades = [t for t in ax.get_xticks() if floor * 2 < t < float(known.max()) * 3]
        ax.set_xticks([floor, *decades])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: 'free' if v == floor else f'${v:.3g}'))
    else:
        right = float(known.max()) * 1.3 if len(known) else 1.0
        ax.set_xlim(left=-right * 0.05, right=right)
        if not len(known):
            ax.set_xticks([0])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f'${v:.3g}'))
    ax.set_xlabel('cost per 1,000 rows, US dollars')
    ax.set_ylabel(metric)
    ax.set_ylim(-0.05, 1.05)
    # Each label beside its point, pushed up just enough not to overlap the one below it (hand-written: matplotlib
    # has no label placement, and adjustText would be a dependency for four labels).
    placed: list[tuple[float, float]] = []  # (x, y) in pixels of labels already placed
    for yv, xv, text, right in sorted(labels):
        px, py = ax.transData.transform((xv, yv))
        y_label = py - 4
        for qx, qy in placed:
            if abs(qx - px) < 150 and y_label < qy + 12:
                y_label = qy + 12
        placed.append((px, y_label))
        ax.annotate(
            text, (xv, yv), xytext=(8 + right, y_label - py), textcoords='offset pixels', fontsize=8, color='#374151'
        )
    ax.set_title('quality against cost: up and to the left is better (free: green, unknown: grey)', fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=90, bbox_inches='tight')
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return (
        f'<img class="pw-chart pw-cost-chart" alt="quality against cost per row" src="data:image/png;base64,{data}"/>'
    )


def render_changelog(changelog: Any) -> str:
    """Render a changelog: the model's description of what changed, the changes the diff lists, and the
    measured effect on each dataset the two versions were compared on (fixed and broken example ids, verdict)."""
    parts = [f'<h4>{_esc(changelog.version_id)} against its parent {_esc(changelog.parent_id)}</h4>']
    problems = list(getattr(changelog, 'problems', None) or [])
    if changelog.text and problems:
        reasons = ''.join(f'<li>{_esc(p)}</li>' for p in problems)
        parts.append(
            f'<div class="pw-note pw-unreliable"><b>Unreliable</b>: what {_esc(changelog.model)} wrote fails these '
            f'checks, so it is a claim, not a finding:<ul>{reasons}</ul></div>'
            f'<blockquote class="pw-changelog-text pw-unreliable-text"><s>{_esc(changelog.text)}</s></blockquote>'
        )
    elif changelog.text:
        parts.append(f'<blockquote class="pw-changelog-text">{_esc(changelog.text)}</blockquote>')
    elif changelog.error:
        parts.append(f'<div class="pw-note">the model could not describe the change: {_esc(changelog.error)}</div>')
    parts.append('<p>What the diff says:</p><ul>' + ''.join(f'<li>{_esc(c)}</li>' for c in changelog.changes) + '</ul>')
    if not changelog.effects:
        parts.append('<p>No measured effect yet: evaluate both versions on the same dataset split.</p>')
    for effect in changelog.effects:
        fixed = ', '.join(effect.fixed[:20]) + (' …' if len(effect.fixed) > 20 else '')
        broken = ', '.join(effect.broken[:20]) + (' …' if len(effect.broken) > 20 else '')
        parts.append(
            f'<div class="pw-effect"><b>{_esc(effect.dataset)} / {_esc(effect.split or "all rows")}</b> '
            f'(n = {effect.n}): {_esc(effect.verdict)}<br>'
            f'<span class="pw-good">fixed {len(effect.fixed)}</span>: {_esc(fixed) or "none"}<br>'
            f'<span class="pw-bad">broken {len(effect.broken)}</span>: {_esc(broken) or "none"}</div>'
        )
    return _wrap(''.join(parts), 'pw-changelog')
