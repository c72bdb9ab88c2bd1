"""Pure render functions: a `VersionComparison` in, an HTML fragment out. The widget and the standalone report
show these; tests check them without a kernel or a browser."""

from __future__ import annotations

import base64
import datetime
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from . import metrics
from .changelog import get_changelog
from .compare import VersionComparison, prompts_for
from .eval_views import render_changelog
from .prompt_diff import diff_versions, render_diff_html
from .runs import main_score_name

__all__ = [
    'FLIP_FILTERS',
    'render_summary',
    'render_per_category',
    'render_confusions',
    'render_flips',
    'render_prompt_diff',
    'render_report',
]

#: Charts stay readable: beyond these, they show the labels that matter most and the tables show the rest.
MAX_CHART_LABELS = 25
MAX_MATRIX_LABELS = 20

FLIP_FILTERS = ('all changes', 'fixed', 'broken', 'changed', 'errors', 'all')

_STYLE = """
<style>
.pw-view { font-family: system-ui, sans-serif; font-size: 13px; }
.pw-view table { border-collapse: collapse; margin: 6px 0; }
.pw-view th, .pw-view td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
.pw-view th:first-child, .pw-view td:first-child { text-align: left; }
.pw-view .pw-note { background: #fff6db; border-left: 4px solid #e0a800; padding: 4px 8px; margin: 4px 0; }
.pw-view .pw-good { color: #1a7f37; } .pw-view .pw-bad { color: #c62828; }
.pw-view details { border-bottom: 1px solid #eee; padding: 2px 0; }
.pw-view summary { cursor: pointer; }
.pw-view .pw-side { display: flex; gap: 8px; } .pw-view .pw-side > div { flex: 1; min-width: 0; }
.pw-view pre { white-space: pre-wrap; background: #f6f8fa; padding: 6px; margin: 2px 0; font-size: 12px; }
</style>
"""


def _wrap(body: str, css_class: str) -> str:
    return f'{_STYLE}<div class="pw-view {css_class}">{body}</div>'


def _signed(value: float, scale: float = 100.0, digits: int = 1) -> str:
    return f'{value * scale:+.{digits}f}'


def _interval(row: pd.Series, prefix: str, scale: float = 100.0, digits: int = 1) -> str:
    diff = row.get(f'{prefix}diff' if prefix else 'diff')
    if diff is None or pd.isna(diff):
        return ''
    low, high = row[f'{prefix}ci_low'], row[f'{prefix}ci_high']
    css = 'pw-good' if low > 0 else 'pw-bad' if high < 0 else ''
    return (
        f'<span class="{css}">{_signed(diff, scale, digits)}</span> '
        f'[{_signed(low, scale, digits)}, {_signed(high, scale, digits)}]'
    )


def _notes(notes: Sequence[str]) -> str:
    return ''.join(f'<div class="pw-note">{html.escape(n)}</div>' for n in notes)


def render_summary(cmp: VersionComparison) -> str:
    """Render the metrics table (differences to the baseline with paired 95% intervals) and the verdicts."""
    main = main_score_name(cmp.task)
    head = ['version', main, f'Δ {main} (points) [95% CI]', 'p']
    if cmp.task == 'choice':
        head += ['macro-F1', 'Δ macro-F1 [95% CI]']
    head += ['mean latency s', 'Δ latency ms [95% CI]', 'mean tokens', 'calls', 'reused', 'errors']
    rows = []
    for version, row in cmp.table.iterrows():
        cells = [
            html.escape(str(version)) + (' (baseline)' if version == cmp.baseline else ''),
            f'{row[main]:.3f}',
            _interval(row, ''),
            '' if pd.isna(row.get('p_value')) else f'{row["p_value"]:.3g}',
        ]
        if cmp.task == 'choice':
            cells += [f'{row["macro_f1"]:.3f}', _interval(row, 'macro_f1_')]
        cells += [
            f'{row["mean_latency_s"]:.3f}',
            _interval(row, 'latency_', 1000.0, 0),
            f'{row["mean_tokens"]:.0f}',
            str(row['calls']),
            str(row['reused']),
            f'<span class="pw-bad">{row["errors"]}</span>' if row['errors'] else '0',
        ]
        rows.append('<tr>' + ''.join(f'<td>{c}</td>' for c in cells) + '</tr>')
    table = (
        '<table class="pw-summary-table"><tr>'
        + ''.join(f'<th>{html.escape(h)}</th>' for h in head)
        + '</tr>'
        + ''.join(rows)
        + '</table>'
    )
    verdicts = ''.join(f'<li>{html.escape(c.verdict)}</li>' for c in cmp.pairwise.values())
    title = (
        f'<h3>{html.escape(cmp.dataset.name)} / {html.escape(cmp.split or "all rows")}: '
        f'{len(cmp.common_ids)} examples, baseline {html.escape(cmp.baseline)}</h3>'
    )
    return _wrap(title + table + f'<ul class="pw-verdicts">{verdicts}</ul>' + _notes(cmp.notes), 'pw-summary')


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=90, bbox_inches='tight')
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _img(data: str, alt: str) -> str:
    return f'<img class="pw-chart" alt="{html.escape(alt)}" src="data:image/png;base64,{data}"/>'


def _per_category(cmp: VersionComparison) -> dict[str, pd.DataFrame]:
    labels = cmp.labels()
    return {
        version: metrics.per_category(
            [str(e) for e in frame['expected']], [None if pd.isna(p) else str(p) for p in frame['prediction']], labels
        )
        for version, frame in cmp.frames.items()
    }


def render_per_category(cmp: VersionComparison) -> str:
    """Render precision, recall and F1 per label for each version, as a table and a grouped bar chart."""
    if cmp.task != 'choice':
        columns = [c for c in next(iter(cmp.runs)).score_columns()]
        means = pd.DataFrame({v: f[columns].fillna(0).mean() for v, f in cmp.frames.items()}).T
        return _wrap(
            '<p>Per-category views apply to label tasks; mean of each score per version:</p>'
            + means.round(3).to_html(),
            'pw-per-category',
        )
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    tables = _per_category(cmp)
    joined = pd.concat({v: t[['precision', 'recall', 'f1']] for v, t in tables.items()}, axis=1)
    joined[('', 'support')] = next(iter(tables.values()))['support']
    f1 = pd.DataFrame({v: t['f1'] for v, t in tables.items()})
    labels, note = list(f1.index), ''
    if len(labels) > MAX_CHART_LABELS:  # a readable chart: the labels whose F1 differs most between versions
        labels = list((f1.max(axis=1) - f1.min(axis=1)).sort_values(ascending=False).index[:MAX_CHART_LABELS])
        note = f'<p>Chart: the {MAX_CHART_LABELS} of {len(f1)} labels whose F1 differs most; the table has all.</p>'
    width = 0.8 / len(tables)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(labels) * len(tables) + 2), 3.2))
    for i, version in enumerate(tables):
        ax.bar([x + i * width for x in range(len(labels))], f1.loc[labels, version], width, label=version)
    ax.set_xticks([x + width * (len(tables) - 1) / 2 for x in range(len(labels))], labels, rotation=30, ha='right')
    ax.set_ylim(0, 1)
    ax.set_ylabel('F1')
    ax.legend(fontsize=8)
    ax.set_title('F1 per category')
    chart = _img(_png(fig), 'F1 per category, grouped by version')
    return _wrap(chart + note + joined.round(3).to_html(classes='pw-category-table'), 'pw-per-category')


def render_confusions(cmp: VersionComparison) -> str:
    """Render each version's confusion matrix as a heatmap, side by side (rows expected, columns predicted)."""
    if cmp.task != 'choice':
        return _wrap('<p>Confusion matrices apply to label tasks.</p>', 'pw-confusions')
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    labels = cmp.labels()
    matrices = {
        version: metrics.confusion_matrix(
            [str(e) for e in frame['expected']], [None if pd.isna(p) else str(p) for p in frame['prediction']], labels
        )
        for version, frame in cmp.frames.items()
    }
    note = ''
    if len(labels) > MAX_MATRIX_LABELS:  # keep the labels involved in the most confusions, in any version
        off_diagonal = [m.loc[labels, labels].to_numpy() * (1 - np.eye(len(labels))) for m in matrices.values()]
        confusions = sum(o.sum(axis=0) + o.sum(axis=1) for o in off_diagonal)
        keep = {labels[i] for i in np.argsort(-confusions, kind='stable')[:MAX_MATRIX_LABELS]}
        labels = [label for label in labels if label in keep]
        matrices = {
            v: m.loc[labels, [c for c in m.columns if c in keep or c == metrics.NONE_COLUMN]]
            for v, m in matrices.items()
        }
        note = (
            f'<p>Showing the {len(labels)} of {len(cmp.labels())} labels involved in the most confusions; '
            'run.confusion_matrix() has them all.</p>'
        )
    size = min(0.45 * len(labels) + 2, 11.0)
    fig, axes = plt.subplots(1, len(matrices), figsize=(size * len(matrices), size), squeeze=False)
    for ax, (version, matrix) in zip(axes[0], matrices.items()):
        values = matrix.to_numpy()
        ax.imshow(values, cmap='Blues')
        ax.set_xticks(range(len(matrix.columns)), list(matrix.columns), rotation=60, ha='right', fontsize=7)
        ax.set_yticks(range(len(matrix.index)), list(matrix.index), fontsize=7)
        for r, c in zip(*np.nonzero(values)):
            count = values[r, c]
            color = 'white' if count > values.max() / 2 else 'black'
            ax.text(c, r, str(count), ha='center', va='center', fontsize=7, color=color)
        ax.set_title(version, fontsize=9)
        ax.set_xlabel('predicted', fontsize=8)
        ax.set_ylabel('expected', fontsize=8)
    return _wrap(_img(_png(fig), 'confusion matrices') + note, 'pw-confusions')


def _filter(frame: pd.DataFrame, which: str) -> pd.DataFrame:
    if which == 'all':
        return frame
    if which == 'errors':
        return frame[frame['error_a'].notna() | frame['error_b'].notna()]
    if which == 'all changes':
        return frame[frame['change'] != 'same']
    return frame[frame['change'] == which]


def _side(row: pd.Series, tag: str, name: str, prompts: dict[str, str]) -> str:
    """Render one version's half of an expanded flip: prediction, score, error and the rendered prompt."""
    err = row[f'error_{tag}']
    out = f'<pre class="pw-error">{html.escape(str(err))}</pre>' if pd.notna(err) else ''
    return (
        f'<div><b>{html.escape(name)}</b>: prediction <code>{html.escape(str(row[f"prediction_{tag}"]))}'
        f'</code>, score {row[f"score_{tag}"]:.3f}{out}<pre>'
        f'{html.escape(prompts.get(row[f"request_hash_{tag}"], ""))}</pre></div>'
    )


def render_flips(cmp: VersionComparison, candidate: str, which: str = 'all changes', *, limit: int = 100) -> str:
    """Render the examples `candidate` fixed, broke or changed against the baseline; each row expands to both
    rendered prompts and both outputs side by side. `which` is one of FLIP_FILTERS."""
    if which not in FLIP_FILTERS:
        raise ValueError(f'flip filter {which!r} is not one of {FLIP_FILTERS}')
    frame = cmp.flips(candidate)
    counts = frame['change'].value_counts()
    errors = int((frame['error_a'].notna() | frame['error_b'].notna()).sum())
    header = (
        f'<p class="pw-flip-counts">{html.escape(candidate)} against {html.escape(cmp.baseline)}: '
        f'<b class="pw-good">{counts.get("fixed", 0)} fixed</b>, '
        f'<b class="pw-bad">{counts.get("broken", 0)} broken</b>, {counts.get("changed", 0)} changed output, '
        f'{counts.get("same", 0)} same, {errors} with a model error. Showing: {html.escape(which)}.</p>'
    )
    shown = _filter(frame, which)
    prompts = prompts_for(list(shown['request_hash_a'].head(limit)) + list(shown['request_hash_b'].head(limit)))
    inputs = list(cmp.dataset.inputs)
    rows = []
    for _, row in shown.head(limit).iterrows():
        mark = {'fixed': 'pw-good', 'broken': 'pw-bad'}.get(row['change'], '')
        error = ' ⚠ error' if pd.notna(row['error_a']) or pd.notna(row['error_b']) else ''
        summary = (
            f'<summary><span class="{mark}">[{row["change"]}{error}]</span> {html.escape(str(row["example_id"]))}'
            f' — expected <b>{html.escape(str(row["expected"]))}</b>: '
            f'{html.escape(str(row["prediction_a"]))} → {html.escape(str(row["prediction_b"]))} — '
            f'{html.escape(str(row[inputs[0]])[:90])}</summary>'
        )

        both = _side(row, 'a', cmp.baseline, prompts) + _side(row, 'b', candidate, prompts)
        rows.append(f'<details>{summary}<div class="pw-side">{both}</div></details>')
    more = f'<p>… {len(shown) - limit} more not shown</p>' if len(shown) > limit else ''
    return _wrap(header + ''.join(rows) + more, 'pw-flips')


def render_prompt_diff(cmp: VersionComparison, candidate: str) -> str:
    """Render the word-level template diff and the settings that changed from the baseline to `candidate`."""
    return render_diff_html(diff_versions(cmp.version(cmp.baseline), cmp.version(candidate)))


def _changelog_section(version_id: str) -> list[str]:
    """Return the version's changelog (what changed from its parent, and what it did) if one was asked for."""
    found = get_changelog(version_id)
    return ['<h3>Changelog</h3>', render_changelog(found)] if found is not None else []


def render_report(cmp: VersionComparison, *, title: str | None = None) -> str:
    """Render a standalone HTML document: summary, per-category table and chart, confusion matrices, and for
    each candidate its flips and prompt diff. It opens in any browser, without a kernel."""
    name = title or f'Prompt comparison: {cmp.dataset.name} / {cmp.split or "all rows"}'
    parts = [
        f'<h1>{html.escape(name)}</h1>',
        f'<p>Generated {datetime.datetime.now().isoformat(timespec="seconds")}; dataset version '
        f'{cmp.dataset.version}; versions {html.escape(", ".join(cmp.version_ids))}.</p>',
        '<h2>Summary</h2>',
        render_summary(cmp),
        '<h2>Per category</h2>',
        render_per_category(cmp),
        '<h2>Confusion matrices</h2>',
        render_confusions(cmp),
    ]
    for candidate in cmp.version_ids:
        if candidate == cmp.baseline:
            continue
        parts += [
            f'<h2>{html.escape(candidate)} against {html.escape(cmp.baseline)}</h2>',
            *_changelog_section(candidate),
            '<h3>Prompt diff</h3>',
            render_prompt_diff(cmp, candidate),
            '<h3>Flips</h3>',
            render_flips(cmp, candidate, 'all changes'),
        ]
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>'
        + html.escape(name)
        + '</title></head><body>'
        + '\n'.join(parts)
        + '</body></html>'
    )
