"""Pure render functions: a `VersionComparison` in, an HTML fragment out. The widget and the standalone report
show these, styled by one stylesheet (`STYLESHEET`); tests check them without a kernel or a browser.

Every pane fits the width it is given: tables sit in horizontally scrolling boxes, charts shrink to the pane,
and the confusion matrices are small multiples that wrap onto as many rows as the width needs.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from workspace.analysis.changelog import Changelog
from workspace.analysis.compare import VersionComparison, row_score_name
from workspace.analysis.comparison_state import FLIPS_PER_PAGE
from workspace.analysis.diff import Op, diff_versions, render_diff_html, word_ops
from workspace.analysis.grid import GridColumn, GridPage
from workspace.core import metrics, stats
from workspace.core.runs import main_score_name
from workspace.display.formats import Kind, count, format_p, format_value, money, percent
from workspace.display.results import render_changelog

__all__ = [
    'STYLESHEET',
    'FLIP_FILTERS',
    'FLIPS_PER_PAGE',
    'format_change',
    'format_interval',
    'change_class',
    'clip',
    'short_names',
    'notes_by_version',
    'flip_counts',
    'render_summary',
    'render_per_category',
    'render_confusions',
    'render_flips',
    'render_prompt_diff',
    'render_grid',
    'render_edit_preview',
    'render_report',
]

PromptLookup = Callable[[Sequence[str]], Mapping[str, str]]  # request hashes in, their rendered prompts out


def _no_prompts(hashes: Sequence[str]) -> Mapping[str, str]:
    return {}


#: Charts stay readable: beyond these, they show the labels that matter most and the tables show the rest.
MAX_CHART_LABELS = 25
MAX_MATRIX_LABELS = 20

#: Which flips to list: rows whose outcome changed, by kind, and every row.
FLIP_FILTERS = ('any change', 'fixed', 'broken', 'output changed', 'model error', 'every example')

_SANS = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, 'Noto Sans', sans-serif"
_MONO = "ui-monospace, SFMono-Regular, Menlo, Consolas, 'Liberation Mono', 'DejaVu Sans Mono', monospace"

#: The one stylesheet of the comparison view and the report. Every rule is scoped to `.pw-view`, so it leaves
#: the rest of a notebook alone; `.pw-pane` resets what the ipywidgets HTML container imposes (a 28 px line
#: height, and a flex item that grows to its content's width instead of scrolling).
STYLESHEET = f"""<style>
.pw-pane, .pw-pane > .widget-html-content {{ min-width: 0; max-width: 100%; line-height: normal; }}
.pw-code textarea {{ font-family: {_MONO}; font-size: 12px; line-height: 18px; }}
.pw-compare {{ --jp-widgets-container-padding: 10px 12px; }}
.pw-compare .jupyter-button.mod-active {{ background-color: #dbeafe; color: #1e40af; box-shadow: inset 0 -2px 0 #1e40af; }}
.pw-view {{ font-family: {_SANS}; font-size: 13px; line-height: 1.45; color: #1f2328; max-width: 100%;
  min-width: 0; white-space: normal; box-sizing: border-box; }}
.pw-view *, .pw-view *::before, .pw-view *::after {{ box-sizing: border-box; }}
.pw-view h1 {{ font-size: 20px; margin: 8px 0 4px; }}
.pw-view h2 {{ font-size: 16px; margin: 22px 0 6px; padding-bottom: 3px; border-bottom: 1px solid #d8dee4; }}
.pw-view h3 {{ font-size: 14px; margin: 4px 0 4px; font-weight: 600; }}
.pw-view h4 {{ font-size: 13px; margin: 12px 0 4px; font-weight: 600; }}
.pw-view p {{ margin: 4px 0; }}
.pw-view .pw-sub {{ color: #59636e; font-size: 12px; margin: 0 0 6px; }}
.pw-view .pw-scroll {{ max-width: 100%; overflow-x: auto; }}
.pw-view table {{ border-collapse: collapse; margin: 4px 0 8px; font-variant-numeric: tabular-nums;
  table-layout: auto; width: auto; font-size: 13px; color: inherit; }}
.pw-view th, .pw-view td {{ border: none; border-bottom: 1px solid #e5e7eb; padding: 3px 6px; text-align: right;
  white-space: nowrap; vertical-align: baseline; line-height: 1.4; max-width: none; }}
.pw-view th {{ font-weight: 600; background: #f6f8fa; }}
.pw-view table.pw-summary-table {{ font-size: 12.5px; }}
.pw-view table.pw-summary-table td, .pw-view table.pw-summary-table th {{ padding: 3px 6px; vertical-align: top; }}
.pw-view table.pw-summary-table .pw-ci {{ display: block; line-height: 1.2; }}
.pw-view table.pw-summary-table tr.pw-reference td {{ color: #59636e; background: #fafbfc; }}
.pw-view .pw-blocks {{ display: flex; flex-wrap: wrap; gap: 0 28px; align-items: flex-start; }}
.pw-view .pw-block {{ min-width: 0; max-width: 100%; }}
.pw-view .pw-block h4 {{ margin: 8px 0 0; }}
.pw-view thead tr:first-child th {{ border-bottom: none; }}
.pw-view th.pw-group {{ text-align: center; border-left: 1px solid #e5e7eb; }}
.pw-view td.pw-first, .pw-view th.pw-first {{ border-left: 1px solid #e5e7eb; }}
.pw-view th:first-child, .pw-view td:first-child {{ text-align: left; }}
.pw-view tbody tr:hover td {{ background: #f6f8fa; }}
.pw-view .pw-ci {{ font-size: 10.5px; color: #59636e; }}
.pw-view .pw-better {{ color: #1a7f37; font-weight: 600; }}
.pw-view .pw-worse {{ color: #c62828; font-weight: 600; }}
.pw-view .pw-muted {{ color: #8c959f; }}
.pw-view .pw-tag {{ display: inline-block; font-size: 11px; line-height: 16px; padding: 0 6px; margin-left: 4px;
  border-radius: 8px; background: #eef1f4; color: #424a53; font-weight: 500; vertical-align: 1px; }}
.pw-view .pw-tag-baseline {{ background: #dbeafe; color: #1e40af; }}
.pw-view .pw-tag-label {{ background: #dcfce7; color: #166534; }}
.pw-view .pw-tag-warn {{ background: #fff1c2; color: #7a5200; }}
.pw-view ul.pw-verdicts {{ margin: 6px 0; padding-left: 0; list-style: none; }}
.pw-view ul.pw-verdicts li {{ margin: 3px 0; padding-left: 18px; text-indent: -18px; }}
.pw-view ul.pw-verdicts li::before {{ content: '●'; display: inline-block; width: 18px; text-indent: 0;
  color: #8c959f; }}
.pw-view ul.pw-verdicts li.pw-better::before {{ color: #1a7f37; }}
.pw-view ul.pw-verdicts li.pw-worse::before {{ color: #c62828; }}
.pw-view ul.pw-verdicts li.pw-better, .pw-view ul.pw-verdicts li.pw-worse {{ font-weight: normal; color: inherit; }}
.pw-view .pw-note {{ background: #fff8e1; border-left: 4px solid #e0a800; padding: 4px 8px; margin: 4px 0; }}
.pw-view .pw-error-text {{ color: #c62828; }}
.pw-view code, .pw-view pre {{ font-family: {_MONO}; font-size: 12px; }}
.pw-view pre {{ white-space: pre-wrap; overflow-wrap: break-word; word-break: normal; background: #f6f8fa;
  border: 1px solid #e5e7eb; border-radius: 4px; padding: 6px 8px; margin: 2px 0 8px; max-height: 22em;
  overflow-y: auto; line-height: 1.4; }}
.pw-view ins {{ background: #c8f0c8; text-decoration: none; }}
.pw-view del {{ background: #f8c8c8; text-decoration: line-through; }}
.pw-view img.pw-chart {{ display: block; max-width: 100%; height: auto; }}
.pw-view .pw-grid {{ display: grid; gap: 10px 16px; align-items: start; }}
.pw-view figure {{ margin: 0; min-width: 0; }}
.pw-view figcaption {{ font-weight: 600; margin: 0 0 2px; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }}
.pw-view .pw-flip-list {{ border-top: 1px solid #e5e7eb; }}
.pw-view details.pw-flip {{ border-bottom: 1px solid #e5e7eb; }}
.pw-view details.pw-flip > summary {{ list-style: none; cursor: pointer; display: grid; align-items: baseline;
  grid-template-columns: 14px 74px minmax(48px, 80px) minmax(70px, 120px) minmax(110px, 230px) minmax(0, 1fr);
  gap: 8px; padding: 3px 4px; }}
.pw-view details.pw-flip > summary::-webkit-details-marker {{ display: none; }}
.pw-view details.pw-flip > summary::before {{ content: '▸'; color: #59636e; }}
.pw-view details.pw-flip[open] > summary::before {{ content: '▾'; }}
.pw-view details.pw-flip > summary:hover {{ background: #f6f8fa; }}
.pw-view .pw-cell {{ min-width: 0; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }}
.pw-view .pw-change {{ font-size: 11px; font-weight: 600; text-transform: uppercase; letter-spacing: .02em; }}
.pw-view .pw-flip-head {{ display: grid; gap: 8px; padding: 3px 4px; font-weight: 600; color: #59636e;
  grid-template-columns: 14px 74px minmax(48px, 80px) minmax(70px, 120px) minmax(110px, 230px) minmax(0, 1fr); }}
.pw-view .pw-side {{ display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 12px;
  padding: 4px 4px 10px 22px; }}
.pw-view .pw-side h4 {{ margin: 4px 0 2px; }}
.pw-view .pw-label {{ color: #59636e; font-size: 12px; margin-top: 4px; }}
.pw-view table.pw-grid-table {{ table-layout: fixed; width: 100%; font-size: 12.5px; }}
.pw-view table.pw-grid-table th, .pw-view table.pw-grid-table td {{ text-align: left; vertical-align: top;
  white-space: normal; overflow-wrap: anywhere; }}
.pw-view table.pw-grid-table th.pw-grid-id, .pw-view table.pw-grid-table td.pw-grid-id {{ width: 72px; }}
.pw-view table.pw-grid-table th.pw-grid-expected {{ width: 100px; }}
.pw-view table.pw-grid-table th.pw-grid-outcome {{ width: 82px; }}
.pw-view table.pw-grid-table th {{ overflow-wrap: normal; }}
.pw-view .pw-scores span {{ white-space: nowrap; }}
.pw-view table.pw-grid-table th.pw-grid-input {{ width: 24%; }}
.pw-view table.pw-grid-table td.pw-row-fail {{ background: #fff5f5; }}
.pw-view .pw-badge {{ display: inline-block; font-size: 10.5px; font-weight: 600; border-radius: 8px; padding: 0 5px;
  line-height: 16px; }}
.pw-view .pw-badge.pw-pass {{ background: #dcfce7; color: #166534; }}
.pw-view .pw-badge.pw-fail {{ background: #fee2e2; color: #991b1b; }}
.pw-view .pw-scores {{ color: #59636e; font-size: 11px; }}
.pw-view .pw-sorted {{ color: #1e40af; font-weight: 600; }}
.pw-view details.pw-flips-all > summary {{ cursor: pointer; }}
.pw-view details.pw-flips-all > summary h4 {{ display: inline; }}
.pw-view.pw-report {{ max-width: 1180px; margin: 0 auto; padding: 8px 16px 40px; }}
</style>
"""

_PALETTE = ('#4b5563', '#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#17becf')
_MARKERS = ('o', 's', 'D', '^', 'v', 'P', 'X', 'h', '*')


# --- formatting (pure, table-tested) -------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """Return `value` as a float, or None when it is missing (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _missing(value: Any) -> bool:
    return _number(value) is None


def format_change(diff: float | None, *, scale: float = 100.0, digits: int = 1) -> str:
    """Return a signed change on the metric's display scale: `+12.5`, `-3`, `+0.0`; '' when there is none.

    >>> format_change(0.125), format_change(-0.0004), format_change(0.035, scale=1000, digits=0)
    ('+12.5', '+0.0', '+35')
    """
    value = _number(diff)
    if value is None:
        return ''
    return f'{round(value * scale, digits) + 0.0:+,.{digits}f}'  # + 0.0 turns a rounded -0.0 into +0.0


def format_interval(low: float | None, high: float | None, *, scale: float = 100.0, digits: int = 1) -> str:
    """Return an interval on the metric's display scale, `[3.1, 20.8]` or `[-10, 50]`; '' when either end is
    missing. Only negative ends carry a sign, as intervals are usually written.

    >>> format_interval(0.031, 0.208), format_interval(-0.0101, 0.0502, scale=1000, digits=0)
    ('[3.1, 20.8]', '[-10, 50]')
    """
    ends = [_number(low), _number(high)]
    if None in ends:
        return ''
    shown = [f'{round(v * scale, digits) + 0.0:,.{digits}f}' for v in ends if v is not None]
    return f'[{shown[0]}, {shown[1]}]'


def change_class(low: float | None, high: float | None, *, higher_is_better: bool = True) -> str:
    """Return 'pw-better' or 'pw-worse' when the interval excludes 0 on that side of the metric, else ''.

    Lower is better for latency, cost and tokens: pass `higher_is_better=False` for those.

    >>> change_class(0.01, 0.2), change_class(0.01, 0.2, higher_is_better=False), change_class(-0.1, 0.2)
    ('pw-better', 'pw-worse', '')
    """
    lo, hi = _number(low), _number(high)
    if lo is None or hi is None:
        return ''
    if lo > 0:
        return 'pw-better' if higher_is_better else 'pw-worse'
    if hi < 0:
        return 'pw-worse' if higher_is_better else 'pw-better'
    return ''


def clip(text: Any, limit: int = 120) -> str:
    """Return `text` on one line, cut at a word boundary before `limit` characters with an ellipsis.

    >>> clip('My parcel has not arrived after two weeks', 24)
    'My parcel has not…'
    """
    flat = ' '.join(str(text).split())
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 1]
    space = cut.rfind(' ')
    return (cut[:space] if space > limit // 2 else cut).rstrip(' ,.;:') + '…'


def short_names(version_ids: Sequence[str]) -> dict[str, str]:
    """Return display names: `v2` when every version belongs to one prompt, the full id otherwise.

    >>> short_names(['ticket_router:v1', 'ticket_router:v2'])
    {'ticket_router:v1': 'v1', 'ticket_router:v2': 'v2'}
    """
    prompts = {v.rsplit(':', 1)[0] for v in version_ids}
    if len(prompts) == 1 and all(':' in v for v in version_ids):
        return {v: v.rsplit(':', 1)[1] for v in version_ids}
    return {v: v for v in version_ids}


def notes_by_version(cmp: VersionComparison) -> dict[str | None, list[str]]:
    """Group the comparison's notes by the version each is about (the first version id it names); notes about
    no single version are under None. The summary shows a version's notes beside its row."""
    grouped: dict[str | None, list[str]] = {}
    ids = sorted(cmp.version_ids, key=len, reverse=True)  # 'p:v10' before 'p:v1'
    for note in cmp.notes:
        owner = next((v for v in ids if re.search(rf'(?<![\w:]){re.escape(v)}(?![\w])', note)), None)
        grouped.setdefault(owner, []).append(note)
    return grouped


# --- shared pieces --------------------------------------------------------------------------------------------


def _wrap(body: str, css_class: str) -> str:
    return f'{STYLESHEET}<div class="pw-view {css_class}">{body}</div>'


def _scroll(inner: str) -> str:
    return f'<div class="pw-scroll">{inner}</div>'


def _tag(text: str, kind: str = '') -> str:
    return f'<span class="pw-tag{" pw-tag-" + kind if kind else ""}">{html.escape(text)}</span>'


def _version_cell(
    cmp: VersionComparison, version: str, names: Mapping[str, str], labels: Mapping[str, Sequence[str]]
) -> str:
    tags = ''.join(_tag(f'@{label}', 'label') for label in labels.get(version, ()))
    if version == cmp.baseline:
        tags = _tag('baseline', 'baseline') + tags
    return f'<b title="{html.escape(version)}">{html.escape(names[version])}</b>{tags}'


@dataclass(frozen=True)
class _Metric:
    """One metric of the summary: where its mean and its change to the baseline are, and how to show them."""

    title: str
    mean: str
    prefix: str  # the table's columns `{prefix}diff`, `{prefix}ci_low`, `{prefix}ci_high`
    kind: Kind  # how the mean reads (the one formatter): 'percent', 'ms' or 'tokens'
    higher_is_better: bool = True
    p: bool = False
    interval: tuple[str, str] | None = None  # the table's columns holding an interval of the mean, if any
    exact: bool = False  # the change is known exactly on these examples: no interval, coloured by its sign

    @property
    def scale(self) -> tuple[float, int]:
        """Return the scale and decimals of a change: points for a percentage, ms for a latency, whole tokens."""
        return {'percent': (100.0, 1), 'ms': (1000.0, 0)}.get(self.kind, (1.0, 0))

    @property
    def change_title(self) -> str:
        unit = {'percent': 'Δ points', 'ms': 'Δ ms'}.get(self.kind, 'Δ')
        return unit if self.exact else f'{unit} [95% CI]'


def _quality_metrics(cmp: VersionComparison) -> list[_Metric]:
    main = main_score_name(cmp.task)
    # The headline score shows an interval of its own when the table has one (`accuracy_low`, `accuracy_high`).
    found = [_Metric(main, main, '', 'percent', p=True, interval=(f'{main}_low', f'{main}_high'))]
    if cmp.task == 'choice':
        found.append(_Metric('macro-F1', 'macro_f1', 'macro_f1_', 'percent'))
    return found


def _cost_metrics() -> list[_Metric]:
    return [
        _Metric('latency', 'mean_latency_s', 'latency_', 'ms', higher_is_better=False),
        # Token counts do not vary between runs of the same requests, so their change is exact on these examples
        _Metric('tokens per request', 'mean_tokens', 'tokens_', 'tokens', higher_is_better=False, exact=True),
    ]


def _token_changes(cmp: VersionComparison) -> pd.DataFrame:
    """Return each candidate's change in tokens per request against the baseline, on the aligned examples."""

    def tokens(frame: pd.DataFrame) -> float:
        return float((frame['prompt_tokens'].fillna(0) + frame['completion_tokens'].fillna(0)).mean())

    base = tokens(cmp.frames[cmp.baseline])
    changes = {v: tokens(cmp.frames[v]) - base for v in cmp.version_ids if v != cmp.baseline}
    return pd.DataFrame({'tokens_diff': changes})


def _mean_cell(row: Mapping[str, Any], metric: _Metric) -> str:
    value = _number(row.get(metric.mean))
    if value is None:
        return '<td class="pw-first"></td>'
    shown = format_value(value, metric.kind)
    low, high = (row.get(metric.interval[0]), row.get(metric.interval[1])) if metric.interval else (None, None)
    scale, digits = metric.scale
    interval = format_interval(low, high, scale=scale, digits=digits)
    small = f'<span class="pw-ci">{interval}</span>' if interval else ''
    return f'<td class="pw-first">{shown}{small}</td>'


def _change_cell(row: Mapping[str, Any], metric: _Metric, css: str | None = None) -> str:
    diff = row.get(f'{metric.prefix}diff')
    if _missing(diff):
        return '<td><span class="pw-muted">–</span></td>'
    low, high = (
        (diff, diff) if metric.exact else (row.get(f'{metric.prefix}ci_low'), row.get(f'{metric.prefix}ci_high'))
    )
    if css is None:
        css = change_class(low, high, higher_is_better=metric.higher_is_better)
    scale, digits = metric.scale
    change = f'<span class="{css}">{format_change(diff, scale=scale, digits=digits)}</span>'
    if metric.exact:
        return f'<td>{change}</td>'
    return f'<td>{change}<span class="pw-ci">{format_interval(low, high, scale=scale, digits=digits)}</span></td>'


def _verdict_class(comparison: stats.Comparison) -> str:
    if not comparison.significant:
        return ''
    return 'pw-better' if comparison.diff > 0 else 'pw-worse'


def _head(specs: Sequence[_Metric], extra: Sequence[str] = (), extra_title: str = '') -> str:
    top, sub = '<th rowspan="2">version</th>', ''
    for spec in specs:
        top += f'<th class="pw-group" colspan="{3 if spec.p else 2}">{html.escape(spec.title)}</th>'
        sub += f'<th class="pw-first">mean</th><th>{spec.change_title}</th>' + ('<th>p</th>' if spec.p else '')
    if extra:
        top += f'<th class="pw-group" colspan="{len(extra)}">{html.escape(extra_title)}</th>'
        sub += ''.join(f'<th{" class=pw-first" if i == 0 else ""}>{html.escape(e)}</th>' for i, e in enumerate(extra))
    return f'<thead><tr>{top}</tr><tr>{sub}</tr></thead>'


def _metric_cells(cmp: VersionComparison, version: str, record: Mapping[str, Any], specs: Sequence[_Metric]) -> str:
    cells = []
    for spec in specs:
        cells.append(_mean_cell(record, spec))
        # the headline change is coloured as its verdict reads: by the test and the interval together
        verdict = cmp.pairwise.get(version) if spec.p else None
        cells.append(_change_cell(record, spec, _verdict_class(verdict) if verdict else None))
        if spec.p:
            cells.append(f'<td>{format_p(record.get("p_value", float("nan")))}</td>')
    return ''.join(cells)


def _references(cmp: VersionComparison) -> dict[str, float]:
    """Return the reference baselines of the comparison (a score reached without a model on the same examples: the
    majority label, the k-nearest vote, the nearest training output), by name, on the main score where they have it."""
    found = cmp.references
    if not found:
        return {}
    main = main_score_name(cmp.task)
    return {r.name: float(r.metrics.get(main, next(iter(r.metrics.values())))) for r in found.items if r.metrics}


def _quality_table(
    cmp: VersionComparison, table: pd.DataFrame, names: Mapping[str, str], labels: Mapping[str, Sequence[str]]
) -> str:
    notes = notes_by_version(cmp)
    specs = _quality_metrics(cmp)
    body = []
    for version, row in table.iterrows():
        warn = _tag(f'⚠ {len(notes[version])}', 'warn') if notes.get(version) else ''
        name = f'<td>{_version_cell(cmp, str(version), names, labels)}{warn}</td>'
        body.append(f'<tr>{name}{_metric_cells(cmp, str(version), row.to_dict(), specs)}</tr>')
    span = sum(3 if s.p else 2 for s in specs) - 1
    for reference, value in _references(cmp).items():  # scores reached without a model, for scale
        body.append(
            f'<tr class="pw-reference"><td><span class="pw-muted">{html.escape(reference)}</span>'
            f'{_tag("reference", "")}</td><td class="pw-first">{percent(value)}</td>'
            f'<td colspan="{span}"><span class="pw-muted">no model</span></td></tr>'
        )
    return f'<table class="pw-summary-table pw-quality">{_head(specs)}<tbody>{"".join(body)}</tbody></table>'


def _cost_table(cmp: VersionComparison, table: pd.DataFrame, names: Mapping[str, str]) -> str:
    specs = _cost_metrics()
    extra = ['calls', 'judge calls', 'reused', 'errors', 'cost']
    body = []
    for version, row in table.iterrows():
        record = row.to_dict()
        errors = int(record['errors'])
        judge_calls = int(record.get('judge_calls') or 0)
        cells = (
            f'<td class="pw-first">{count(record["calls"])}</td>'
            f'<td class="{"" if judge_calls else "pw-muted"}">{count(judge_calls)}</td>'
            f'<td>{count(record["reused"])}</td>'
            f'<td class="{"pw-worse" if errors else "pw-muted"}">{count(errors)}</td>'
            f'<td>{money(record.get("cost_usd"))}</td>'
        )
        name = f'<td><b title="{html.escape(str(version))}">{html.escape(names[str(version)])}</b></td>'
        body.append(f'<tr>{name}{_metric_cells(cmp, str(version), record, specs)}{cells}</tr>')
    head = _head(specs, extra, 'requests')
    return f'<table class="pw-summary-table pw-cost">{head}<tbody>{"".join(body)}</tbody></table>'


def _scores_table(cmp: VersionComparison, names: Mapping[str, str]) -> str:
    """Return the table of every other scorer (custom scorers, judges), or '' when there is none. A judge's
    mean is over the rows it judged, with how many."""
    scorers = [c for c in getattr(cmp, 'scorers', []) if c in cmp.table.columns]
    if not scorers:
        return ''
    head = ''.join(
        f'<th class="pw-first">{html.escape(c)}{" (judge)" if f"{c}_n" in cmp.table.columns else ""}</th>'
        for c in scorers
    )
    body = []
    for version, row in cmp.table.iterrows():
        cells = []
        for column in scorers:
            judged = row.get(f'{column}_n')
            if judged is not None and not judged:
                cells.append('<td class="pw-first"><span class="pw-muted">not judged</span></td>')
                continue
            shown = percent(row[column])
            small = (
                f'<span class="pw-ci">{int(judged):,} of {int(row["n"]):,} judged</span>' if judged is not None else ''
            )
            cells.append(f'<td class="pw-first">{shown}{small}</td>')
        name = f'<td><b title="{html.escape(str(version))}">{html.escape(names[str(version)])}</b></td>'
        body.append(f'<tr>{name}{"".join(cells)}</tr>')
    return (
        f'<table class="pw-summary-table pw-scores"><thead><tr><th>version</th>{head}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table>'
    )


def _summary_body(cmp: VersionComparison, labels: Mapping[str, Sequence[str]]) -> str:
    names = short_names(cmp.version_ids)
    table = cmp.table.join(_token_changes(cmp)) if len(cmp.version_ids) > 1 else cmp.table
    notes = notes_by_version(cmp)
    test = "McNemar's exact test" if cmp.task != 'text' else 'a paired sign-flip test'
    title = (
        f'<h3>{html.escape(cmp.dataset.name)} · {html.escape(cmp.split or "all rows")} · '
        f'{len(cmp.common_ids):,} examples · baseline {html.escape(cmp.baseline)}</h3>'
        f'<p class="pw-sub">Δ: version minus baseline on the same examples (percentage points for scores), with a '
        f'paired 95% bootstrap interval below it; p: {test}. <span class="pw-better">Green</span> is better and '
        '<span class="pw-worse">red</span> worse where the interval excludes 0 (lower latency and fewer tokens are '
        'better).</p>'
    )
    blocks = [
        f'<div class="pw-block"><h4>Quality</h4>{_scroll(_quality_table(cmp, table, names, labels))}</div>',
        f'<div class="pw-block"><h4>Speed, size and requests</h4>{_scroll(_cost_table(cmp, table, names))}</div>',
    ]
    scores = _scores_table(cmp, names)
    if scores:
        blocks.append(f'<div class="pw-block"><h4>Other scores</h4>{_scroll(scores)}</div>')
    verdicts = ''.join(f'<li class="{_verdict_class(c)}">{html.escape(c.verdict)}</li>' for c in cmp.pairwise.values())
    parts = [title, f'<div class="pw-blocks">{"".join(blocks)}</div>', _references_line(cmp)]
    if verdicts:
        parts.append(f'<h4>Verdicts</h4><ul class="pw-verdicts">{verdicts}</ul>')
    parts.append(_notes_html(notes, names))
    return ''.join(parts)


def _references_line(cmp: VersionComparison) -> str:
    """Say under the table what the reference rows are: the same examples scored without a model call."""
    refs = cmp.references
    if not refs:
        return ''
    caveat = ''.join(f' ({html.escape(n)})' for n in refs.notes)
    return (
        f'<p class="pw-sub pw-references">Rows marked reference score the same {refs.n:,} examples with no model '
        f'call (the embedder and the training split only): a version should beat them.{caveat}</p>'
    )


def _notes_html(notes: Mapping[str | None, Sequence[str]], names: Mapping[str, str]) -> str:
    """Render notes and warnings, each version's under its name (the place for per-version warnings)."""
    if not notes:
        return ''
    parts = ['<div class="pw-notes"><h4>Notes</h4>']
    for version, texts in notes.items():
        owner = f'data-version="{html.escape(version)}"' if version else ''
        for text in texts:
            parts.append(f'<div class="pw-note" {owner}>{html.escape(text)}</div>')
    return ''.join(parts) + '</div>'


def render_summary(cmp: VersionComparison, *, labels: Mapping[str, Sequence[str]] | None = None) -> str:
    """Render the metrics table, one row per version and one line per cell: each metric's mean and its change
    to the baseline on the metric's own scale with a paired 95% interval in small type, coloured by whether it
    is better for that metric; then a verdict per candidate naming both versions, then notes per version.

    `labels` maps a version id to its labels (`production`, ...), shown beside it.
    """
    return _wrap(_summary_body(cmp, labels or {}), 'pw-summary')


# --- charts ---------------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def _img(fig: Any, alt: str, dpi: int = 100) -> str:
    """Render a figure as an inline PNG at twice its display size (sharp on high-density screens)."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=2 * dpi, bbox_inches='tight', facecolor='white')
    plt.close(fig)
    data = buffer.getvalue()
    width, height = int.from_bytes(data[16:20], 'big') // 2, int.from_bytes(data[20:24], 'big') // 2
    encoded = base64.b64encode(data).decode()
    return (
        f'<img class="pw-chart" alt="{html.escape(alt)}" width="{width}" height="{height}" '
        f'src="data:image/png;base64,{encoded}"/>'
    )


def _predicted(frame: pd.DataFrame) -> list[str | None]:
    return [None if pd.isna(p) else str(p) for p in frame['prediction']]


def _per_category(cmp: VersionComparison) -> dict[str, pd.DataFrame]:
    labels = cmp.labels()
    return {
        version: metrics.per_category([str(e) for e in frame['expected']], _predicted(frame), labels)
        for version, frame in cmp.frames.items()
    }


def _f1_chart(f1: pd.DataFrame, cmp: VersionComparison, names: Mapping[str, str]) -> str:
    """Draw F1 per category as a dot plot: one row per category, one marker per version, so the width never depends
    on the number of categories or versions (the height grows with the categories)."""
    plt = _pyplot()
    labels = list(f1.index)[::-1]  # the first label at the top
    versions = list(f1.columns)
    # One lane per version inside each category's row, a marker's width apart, so versions with the same F1 on
    # a category sit one above the other instead of hiding each other.
    lane = 0.1  # inches between lanes; a marker (s=30) is about 0.08 in wide
    row = max(0.28, lane * len(versions) + 0.08)
    fig, ax = plt.subplots(figsize=(6.4, row * len(labels) + 0.9))
    spread = lane * (len(versions) - 1) / row  # in rows
    # the first version on top of each row, as in the legend
    offsets = np.linspace(spread / 2, -spread / 2, len(versions)) if len(versions) > 1 else np.zeros(1)
    for y in range(len(labels)):
        ax.axhline(y, color='#eceff2', linewidth=0.8, zorder=1)
    for i, version in enumerate(versions):
        name = names[version] + (' (baseline)' if version == cmp.baseline else '')
        ax.scatter(
            f1.loc[labels, version],
            np.arange(len(labels)) + offsets[i],
            s=30,
            marker=_MARKERS[i % len(_MARKERS)],
            color=_PALETTE[i % len(_PALETTE)],
            label=name,
            zorder=3,
            edgecolors='white',
            linewidths=0.5,
        )
    ax.set_yticks(range(len(labels)), labels, fontsize=9)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.7, len(labels) - 0.3)
    ax.set_xlabel('F1 (0 to 1)', fontsize=9)
    ax.tick_params(axis='x', labelsize=9)
    ax.set_title('F1 per category', fontsize=11, loc='left')
    for side in ('top', 'right'):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=9, loc='upper left', bbox_to_anchor=(1.01, 1.0), frameon=False, title='version')
    return _img(fig, 'F1 per category, one marker per version')


def _category_table(tables: Mapping[str, pd.DataFrame], names: Mapping[str, str], baseline: str) -> str:
    first = next(iter(tables.values()))
    top = '<th rowspan="2">category</th><th rowspan="2">support</th>'
    sub = ''
    for version in tables:
        mark = ' (baseline)' if version == baseline else ''
        top += f'<th class="pw-group" colspan="3">{html.escape(names[version] + mark)}</th>'
        sub += '<th class="pw-first">precision</th><th>recall</th><th>F1</th>'
    rows = []
    for label in first.index:
        cells = [f'<td>{html.escape(str(label))}</td>', f'<td>{int(first.loc[label, "support"]):,}</td>']
        base_f1 = tables[baseline].loc[label, 'f1']
        for version, t in tables.items():
            f1 = t.loc[label, 'f1']
            css = '' if version == baseline or abs(f1 - base_f1) < 1e-9 else 'pw-better' if f1 > base_f1 else 'pw-worse'
            cells += [
                f'<td class="pw-first">{percent(t.loc[label, "precision"])}</td>',
                f'<td>{percent(t.loc[label, "recall"])}</td>',
                f'<td class="{css}">{percent(f1)}</td>',
            ]
        rows.append('<tr>' + ''.join(cells) + '</tr>')
    return _scroll(
        f'<table class="pw-category-table"><thead><tr>{top}</tr><tr>{sub}</tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table>'
    )


def _per_category_body(cmp: VersionComparison) -> str:
    if cmp.task != 'choice':
        columns = list(next(iter(cmp.runs)).score_columns())
        means = pd.DataFrame({v: f[columns].fillna(0).mean() for v, f in cmp.frames.items()}).T
        return '<p>Per-category views apply to label tasks; mean of each score per version:</p>' + _scroll(
            means.map(percent).to_html(classes='pw-category-table')
        )
    names = short_names(cmp.version_ids)
    tables = _per_category(cmp)
    f1 = pd.DataFrame({v: t['f1'] for v, t in tables.items()})
    note = ''
    if len(f1) > MAX_CHART_LABELS:  # a readable chart: the labels whose F1 differs most between versions
        keep = (f1.max(axis=1) - f1.min(axis=1)).sort_values(ascending=False, kind='stable').index[:MAX_CHART_LABELS]
        f1 = f1.loc[[label for label in f1.index if label in set(keep)]]
        note = (
            f'<p class="pw-sub">Chart: the {MAX_CHART_LABELS} of {len(tables[cmp.baseline])} categories whose F1 '
            'differs most between versions; the table has all.</p>'
        )
    changed = (
        '<p class="pw-sub">F1 in <span class="pw-better">green</span> or <span class="pw-worse">red</span>: '
        'higher or lower than the baseline on that category.</p>'
    )
    return (
        _f1_chart(f1, cmp, names)
        + note
        + '<h4>Precision, recall and F1 per category</h4>'
        + changed
        + _category_table(tables, names, cmp.baseline)
    )


def render_per_category(cmp: VersionComparison) -> str:
    """Render F1 per category as a dot plot (one marker per version) and precision, recall and F1 per category
    and version as a table."""
    return _wrap(_per_category_body(cmp), 'pw-per-category')


def _matrices(cmp: VersionComparison) -> tuple[dict[str, pd.DataFrame], str]:
    labels = cmp.labels()
    matrices = {
        version: metrics.confusion_matrix([str(e) for e in frame['expected']], _predicted(frame), labels)
        for version, frame in cmp.frames.items()
    }
    # Every matrix gets the same columns, so the small multiples line up
    columns = labels + (
        [metrics.NONE_COLUMN] if any(metrics.NONE_COLUMN in m.columns for m in matrices.values()) else []
    )
    matrices = {v: m.reindex(columns=columns, fill_value=0) for v, m in matrices.items()}
    if len(labels) <= MAX_MATRIX_LABELS:
        return matrices, ''
    # keep the labels involved in the most confusions, in any version
    off_diagonal = [m.loc[labels, labels].to_numpy() * (1 - np.eye(len(labels))) for m in matrices.values()]
    confusions = sum(o.sum(axis=0) + o.sum(axis=1) for o in off_diagonal)
    keep = {labels[i] for i in np.argsort(-confusions, kind='stable')[:MAX_MATRIX_LABELS]}
    kept = [label for label in labels if label in keep]
    matrices = {
        v: m.loc[kept, [c for c in m.columns if c in keep or c == metrics.NONE_COLUMN]] for v, m in matrices.items()
    }
    note = (
        f'<p class="pw-sub">Showing the {len(kept)} of {len(labels)} categories involved in the most confusions; '
        'run.confusion_matrix() has them all.</p>'
    )
    return matrices, note


def _matrix_figure(matrix: pd.DataFrame, title: str, vmax: int) -> str:
    plt = _pyplot()
    values = matrix.to_numpy()
    rows, cols = values.shape
    cell = 0.3 if rows <= 12 else 0.24
    longest = max([len(str(x)) for x in [*matrix.index, *matrix.columns]] + [4])
    margin = min(0.06 * longest + 0.35, 2.2)  # room for the tick labels
    fig, ax = plt.subplots(figsize=(cols * cell + margin + 0.6, rows * cell + margin + 0.5))
    image = ax.imshow(values, cmap='Blues', vmin=0, vmax=max(vmax, 1), aspect='equal')
    font = 7.5 if rows <= 12 else 6.5
    ax.set_xticks(
        range(cols), [str(c) for c in matrix.columns], rotation=50, ha='right', rotation_mode='anchor', fontsize=font
    )
    ax.set_yticks(range(rows), [str(r) for r in matrix.index], fontsize=font)
    for r, c in zip(*np.nonzero(values)):
        count = values[r, c]
        ax.text(
            c,
            r,
            str(count),
            ha='center',
            va='center',
            fontsize=font,
            color='white' if count > 0.55 * vmax else '#1f2328',
        )
    ax.set_xlabel('predicted', fontsize=9)
    ax.set_ylabel('expected', fontsize=9)
    ax.set_title(title, fontsize=10, loc='left')
    bar = fig.colorbar(image, ax=ax, fraction=0.035, pad=0.025)
    bar.ax.tick_params(labelsize=7)
    bar.outline.set_visible(False)
    return _img(fig, f'confusion matrix of {title}')


def _confusions_body(cmp: VersionComparison) -> str:
    if cmp.task != 'choice':
        return '<p>Confusion matrices apply to label tasks.</p>'
    names = short_names(cmp.version_ids)
    matrices, note = _matrices(cmp)
    vmax = int(max(m.to_numpy().max() for m in matrices.values()))
    figures = []
    for version, matrix in matrices.items():
        accuracy = cmp.table.loc[version, 'accuracy'] * 100
        label = names[version] + (' (baseline)' if version == cmp.baseline else '')
        image = _matrix_figure(matrix, f'{label}: accuracy {accuracy:.1f}%', vmax)
        figures.append(f'<figure title="{html.escape(version)}">{image}</figure>')
    width = max(int(re.search(r'width="(\d+)"', f)[1]) for f in figures)  # type: ignore[index]
    grid = (
        f'<div class="pw-grid" style="grid-template-columns: repeat(auto-fill, minmax(min(100%, {width}px), 1fr))">'
        + ''.join(figures)
        + '</div>'
    )
    head = (
        '<p class="pw-sub">Rows: expected category; columns: predicted category ((none): no answer). One colour scale for '
        f'every matrix (0 to {vmax} examples), so the matrices compare directly.</p>'
    )
    return head + grid + note


def render_confusions(cmp: VersionComparison) -> str:
    """Render each version's confusion matrix as a titled heatmap, small multiples on one colour scale that
    wrap onto as many rows as the width needs (rows expected, columns predicted)."""
    return _wrap(_confusions_body(cmp), 'pw-confusions')


# --- flips ----------------------------------------------------------------------------------------------------


def _errors(frame: pd.DataFrame) -> pd.Series:
    return frame['error_a'].notna() | frame['error_b'].notna()


def _filter(frame: pd.DataFrame, which: str) -> pd.DataFrame:
    if which not in FLIP_FILTERS:
        raise ValueError(f'flip filter {which!r} is not one of {FLIP_FILTERS}')
    if which == 'every example':
        return frame
    if which == 'model error':
        return frame[_errors(frame)]
    if which == 'any change':
        return frame[frame['change'] != 'same']
    if which == 'output changed':
        return frame[frame['change'] == 'changed']
    return frame[frame['change'] == which]


def flip_counts(flips: pd.DataFrame) -> dict[str, int]:
    """Return how many rows each flip filter shows, for the filter buttons and the header.

    >>> flip_counts(pd.DataFrame({'change': ['fixed', 'same'], 'error_a': [None, None], 'error_b': [None, 'x']}))
    {'any change': 1, 'fixed': 1, 'broken': 0, 'output changed': 0, 'model error': 1, 'every example': 2}
    """
    return {which: len(_filter(flips, which)) for which in FLIP_FILTERS}


def _ops_side(ops: Sequence[tuple[Op, str]], side: str) -> str:
    """Render one side of a word diff: the baseline shows what it lost, the candidate what it gained."""
    keep = 'delete' if side == 'a' else 'insert'
    tag = 'del' if side == 'a' else 'ins'
    return ''.join(
        html.escape(text) if op == 'equal' else f'<{tag}>{html.escape(text)}</{tag}>'
        for op, text in ops
        if op in ('equal', keep)
    )


def _outcome(row: pd.Series, tag: str) -> str:
    error = row[f'error_{tag}']
    prediction = (
        '<span class="pw-muted">no answer</span>'
        if pd.isna(row[f'prediction_{tag}'])
        else f'<code>{html.escape(str(row[f"prediction_{tag}"]))}</code>'
    )
    parts = [f'prediction {prediction}, score {percent(row[f"score_{tag}"])}']
    if pd.notna(error):
        parts.append(f'<div class="pw-error-text">{html.escape(clip(error, 400))}</div>')
    return ''.join(parts)


def _flip_html(
    row: pd.Series,
    cmp: VersionComparison,
    candidate: str,
    names: Mapping[str, str],
    prompts: Mapping[str, str],
    first_input: str,
) -> str:
    change = row['change']
    css = {'fixed': 'pw-better', 'broken': 'pw-worse'}.get(change, '')
    error = ' ⚠' if pd.notna(row['error_a']) or pd.notna(row['error_b']) else ''
    word = change
    a, b = row['prediction_a'], row['prediction_b']
    a_text = '(none)' if pd.isna(a) else str(a)
    b_text = '(none)' if pd.isna(b) else str(b)
    text = str(row[first_input])
    summary = (
        f'<summary><span class="pw-cell pw-change {css}">{html.escape(word)}{error}</span>'
        f'<span class="pw-cell" title="{html.escape(str(row["example_id"]))}">'
        f'{html.escape(str(row["example_id"]))}</span>'
        f'<span class="pw-cell" title="expected {html.escape(str(row["expected"]))}">'
        f'<b>{html.escape(str(row["expected"]))}</b></span>'
        f'<span class="pw-cell" title="{html.escape(a_text)} → {html.escape(b_text)}">'
        f'{html.escape(a_text)} → {html.escape(b_text)}</span>'
        f'<span class="pw-cell" title="{html.escape(clip(text, 400))}">{html.escape(clip(text, 160))}</span>'
        '</summary>'
    )
    outputs = {
        tag: cmp.frames[v].loc[row['example_id'], 'output'] for tag, v in (('a', cmp.baseline), ('b', candidate))
    }
    output_ops = word_ops(*('' if pd.isna(outputs[t]) else str(outputs[t]) for t in ('a', 'b')))
    prompt_ops = word_ops(prompts.get(row['request_hash_a'], ''), prompts.get(row['request_hash_b'], ''))
    sides = []
    for tag, version in (('a', cmp.baseline), ('b', candidate)):
        mark = ' (baseline)' if tag == 'a' else ''
        sides.append(
            f'<div><h4>{html.escape(names[version] + mark)}</h4>{_outcome(row, tag)}'
            f'<div class="pw-label">raw output</div><pre>{_ops_side(output_ops, tag)}</pre>'
            f'<div class="pw-label">rendered prompt</div><pre>{_ops_side(prompt_ops, tag)}</pre></div>'
        )
    return f'<details class="pw-flip">{summary}<div class="pw-side">{"".join(sides)}</div></details>'


def _flips_body(
    cmp: VersionComparison,
    candidate: str,
    which: str,
    page: int,
    per_page: int,
    *,
    prompts: PromptLookup,
    more_hint: str = '',
    title: bool = True,
) -> str:
    frame = cmp.flips(candidate)
    shown = _filter(frame, which)
    counts = flip_counts(frame)
    names = short_names(cmp.version_ids)
    pages = max(1, math.ceil(len(shown) / per_page))
    page = min(max(page, 0), pages - 1)
    start = page * per_page
    window = shown.iloc[start : start + per_page]
    same = counts['every example'] - counts['any change']
    header = (
        (f'<h3>{html.escape(candidate)} against {html.escape(cmp.baseline)}</h3>' if title else '')
        + f'<p class="pw-flip-counts">{counts["every example"]:,} examples: '
        f'<b class="pw-better">{counts["fixed"]:,} fixed</b>, <b class="pw-worse">{counts["broken"]:,} broken</b>, '
        f'{counts["output changed"]:,} with another output but the same score, {same:,} unchanged; '
        f'{counts["model error"]:,} with a model error.</p>'
    )
    if shown.empty:
        return header + f'<p class="pw-sub">No example is {html.escape(which)}.</p>'
    position = (
        f'<p class="pw-sub pw-page">Showing {start + 1:,}–{start + len(window):,} of {len(shown):,} '
        f'({html.escape(which)}), page {page + 1} of {pages}. Click a row for both outputs and rendered prompts, '
        'differences highlighted.</p>'
    )
    rendered = dict(prompts(list(window['request_hash_a']) + list(window['request_hash_b'])))
    first_input = list(cmp.dataset.inputs)[0]
    head = (
        '<div class="pw-flip-head"><span></span><span>change</span><span>example</span><span>expected</span>'
        f'<span>{html.escape(names[cmp.baseline])} → {html.escape(names[candidate])}</span>'
        f'<span>{html.escape(first_input)}</span></div>'
    )
    rows = ''.join(_flip_html(row, cmp, candidate, names, rendered, first_input) for _, row in window.iterrows())
    rest = len(shown) - start - len(window)
    tail = f'<p class="pw-sub">{rest:,} more {more_hint}</p>' if rest > 0 and more_hint else ''
    return header + position + f'<div class="pw-flip-list">{head}{rows}</div>' + tail


def render_flips(
    cmp: VersionComparison,
    candidate: str,
    which: str = 'any change',
    *,
    page: int = 0,
    per_page: int = FLIPS_PER_PAGE,
    prompts: PromptLookup = _no_prompts,
) -> str:
    """Render one page of the examples `candidate` fixed, broke or changed against the baseline, with counts;
    each row expands to both outputs and both rendered prompts, their differences highlighted word by word.

    `which` is one of FLIP_FILTERS; `page` counts from 0 (past the end shows the last page); `prompts` returns
    the rendered prompt of each request hash asked for (`workspace.analysis.compare.prompts_for`).
    """
    if which not in FLIP_FILTERS:
        raise ValueError(f'flip filter {which!r} is not one of {FLIP_FILTERS}')
    return _wrap(_flips_body(cmp, candidate, which, page, per_page, prompts=prompts), 'pw-flips')


# --- the grid -------------------------------------------------------------------------------------------------


def _grid_head(page: GridPage, cmp: VersionComparison, names: Mapping[str, str]) -> str:
    sort = page.query.sort
    arrow = '▲' if page.query.ascending else '▼'
    by_key = {c.key: c for c in page.columns}
    sorted_version = by_key[sort].version if sort in by_key else None
    cells = []
    for column in page.columns:
        if column.version is not None:
            if column.kind != 'output':
                continue
            version = column.version
            mark = ' (baseline)' if version == cmp.baseline else ''
            what = ''
            if sort is not None and sorted_version == version:
                what = f' <span class="pw-sorted">{arrow} {html.escape(by_key[sort].title.split(" ", 1)[1])}</span>'
            cells.append(
                f'<th class="pw-grid-version" title="{html.escape(version)}">{html.escape(names[version] + mark)}'
                f'{what}</th>'
            )
            continue
        what = f' <span class="pw-sorted">{arrow}</span>' if sort == column.key else ''
        cells.append(f'<th class="pw-grid-{column.kind}">{html.escape(column.title)}{what}</th>')
    return '<thead><tr>' + ''.join(cells) + '</tr></thead>'


def _grid_cell(row: Any, version: str, scorers: Sequence[GridColumn]) -> str:
    passed = bool(row[f'{version}|pass'])
    output = row[f'{version}|output']
    error = row[f'{version}|error']
    badge = '<span class="pw-badge pw-pass">✓ pass</span>' if passed else '<span class="pw-badge pw-fail">✗ fail</span>'
    text = '<span class="pw-muted">no answer</span>' if _missing_text(output) else html.escape(clip(output, 90))
    title = '' if _missing_text(output) else html.escape(clip(output, 600))
    scores = ' · '.join(
        f'<span>{html.escape(c.title.split(" ", 1)[1])} {percent(row[c.key]) or "–"}</span>'
        for c in scorers
        if c.version == version
    )
    err = f'<div class="pw-error-text" title="{html.escape(str(error))}">{html.escape(clip(error, 80))}</div>'
    return (
        f'<td class="pw-grid-out {"pw-row-pass" if passed else "pw-row-fail"}" title="{title}">{badge} {text}'
        f'<div class="pw-scores">{scores}</div>{err if not _missing_text(error) else ""}</td>'
    )


def _missing_text(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == ''


def render_grid(page: GridPage, cmp: VersionComparison) -> str:
    """Render one page of the grid: a row per example with its inputs and expected output, then a cell per
    version with its output, pass or fail, and every score (custom scorers and judges), then the outcome across
    versions. The columns the query sorts by carry an arrow; the counts say how many rows match."""
    names = short_names(cmp.version_ids)
    # each cell's badge says pass or fail by the row score; the cell lists every other score (a text task's ROUGE-L
    # too, as the badge only says whether it reached the bar)
    row_score = row_score_name(cmp.task)
    scorers = [
        c for c in page.columns if c.kind == 'score' and (cmp.task == 'text' or not c.key.endswith(f'|{row_score}'))
    ]
    start = page.page * page.query.per_page
    searched = f' matching “{html.escape(page.query.search)}”' if page.query.search.strip() else ''
    titles = {c.key: c.title for c in page.columns}
    filtered = ''.join(
        f', {html.escape(titles.get(f.column, f.column))} {html.escape(f.op)} {html.escape(f.value)}'.rstrip()
        for f in page.query.filters
    )
    if page.rows.empty:
        return _wrap(
            f'<p class="pw-sub pw-grid-count">No example of {page.total:,}{searched}{filtered}.</p>', 'pw-grid-view'
        )
    count_line = (
        f'<p class="pw-sub pw-grid-count">Showing {start + 1:,}–{start + len(page.rows):,} of {page.matches:,} '
        f'examples{searched}{filtered} ({page.total:,} in all), page {page.page + 1} of {page.pages}. Each cell: '
        'pass or fail by the row score, the output, then every score.</p>'
    )
    body = []
    for _, row in page.rows.iterrows():
        cells = []
        for column in page.columns:
            if column.version is not None:
                if column.kind == 'output':
                    cells.append(_grid_cell(row, column.version, scorers))
                continue
            value = row[column.key]
            if column.kind == 'outcome':
                css = {'all pass': 'pw-better', 'all fail': 'pw-worse'}.get(str(value), '')
                cells.append(f'<td class="pw-grid-outcome {css}">{html.escape(str(value))}</td>')
            elif column.kind == 'input':
                cells.append(
                    f'<td class="pw-grid-input" title="{html.escape(clip(value, 800))}">{html.escape(clip(value, 140))}</td>'
                )
            else:
                cells.append(f'<td class="pw-grid-{column.kind}">{html.escape(str(value))}</td>')
        body.append(f'<tr data-example="{html.escape(str(row["example_id"]))}">' + ''.join(cells) + '</tr>')
    table = f'<table class="pw-grid-table">{_grid_head(page, cmp, names)}<tbody>{"".join(body)}</tbody></table>'
    return _wrap(count_line + _scroll(table), 'pw-grid-view')


def render_prompt_diff(cmp: VersionComparison, candidate: str) -> str:
    """Render the word-level template diff and the settings that changed from the baseline to `candidate`."""
    return _wrap(render_diff_html(diff_versions(cmp.version(cmp.baseline), cmp.version(candidate))), 'pw-diff-pane')


def render_edit_preview(example_id: str, before: str, after: str, *, source: str, changed: int, total: int) -> str:
    """Render the check of an edited template: the prompt it renders for one example, with what differs from
    the prompt `source` sends highlighted, and how many of the split's requests the edit changes."""
    ops = word_ops(before, after)
    same = all(op == 'equal' for op, _ in ops)
    note = f"{changed:,} of {total:,} requests differ from {html.escape(source)}'s."

    body = (
        f'<p class="pw-sub">{note}</p>'
        f'<div class="pw-label">rendered for example {html.escape(example_id)}'
        f'{" (the same as " + html.escape(source) + ")" if same else ", differences from " + html.escape(source)}'
        f'</div><pre>{_ops_side(ops, "b")}</pre>'
    )
    return _wrap(body, 'pw-edit-preview')


def _changelog_section(found: Changelog | None) -> list[str]:
    """Return the version's changelog (what changed from its parent, and what it did) if one was asked for."""
    return ['<h4>Changelog</h4>', render_changelog(found)] if found is not None else []


# --- the report -----------------------------------------------------------------------------------------------


def render_report(
    cmp: VersionComparison,
    *,
    title: str | None = None,
    labels: Mapping[str, Sequence[str]] | None = None,
    changelogs: Mapping[str, Changelog] | None = None,
    prompts: PromptLookup = _no_prompts,
) -> str:
    """Render a standalone HTML document: summary, per-category chart and table, confusion matrices, and for
    each candidate its changelog, prompt diff and every flip (folded when there are more than a page of them, each
    row expanding to both outputs and prompts). It opens in any browser, without a kernel.

    `labels` maps a version id to its labels (`production`, ...), shown beside it in the summary; `changelogs`
    a version id to its changelog; `prompts` looks up rendered prompts by request hash (see `render_flips`)."""
    name = title or f'Prompt comparison: {cmp.dataset.name} / {cmp.split or "all rows"}'
    parts = [
        f'<h1>{html.escape(name)}</h1>',
        f'<p class="pw-sub">Generated {datetime.datetime.now().isoformat(sep=" ", timespec="seconds")}; dataset '
        f'{html.escape(cmp.dataset.name)} (table version {cmp.dataset.version}); versions '
        f'{html.escape(", ".join(cmp.version_ids))}.</p>',
        '<h2>Summary</h2>',
        _summary_body(cmp, labels or {}),
        '<h2>Per category</h2>',
        _per_category_body(cmp),
        '<h2>Confusion matrices</h2>',
        _confusions_body(cmp),
    ]
    for candidate in cmp.version_ids:
        if candidate == cmp.baseline:
            continue
        counts = flip_counts(cmp.flips(candidate))
        every = max(counts['any change'], 1)  # the report carries every flip, folded: it has no pages to turn
        parts += [
            f'<h2>{html.escape(candidate)} against {html.escape(cmp.baseline)}</h2>',
            *_changelog_section((changelogs or {}).get(candidate)),
            '<h4>Prompt diff</h4>',
            render_diff_html(diff_versions(cmp.version(cmp.baseline), cmp.version(candidate))),
            f'<details class="pw-flips-all"{" open" if counts["any change"] <= FLIPS_PER_PAGE else ""}>'
            f'<summary><h4>Flips: {counts["any change"]:,} examples changed ({counts["fixed"]:,} fixed, '
            f'{counts["broken"]:,} broken); click to {"fold" if counts["any change"] <= FLIPS_PER_PAGE else "unfold"}'
            '</h4></summary>',
            _flips_body(cmp, candidate, 'any change', 0, every, prompts=prompts, title=False),
            '</details>',
        ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{html.escape(name)}</title>{STYLESHEET}</head><body style="margin:0">'
        f'<main class="pw-view pw-report">{"".join(parts)}</main></body></html>'
    )
