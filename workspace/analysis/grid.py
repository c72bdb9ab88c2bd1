"""The grid of a comparison: every example against every compared version, searchable, sortable and filterable.

`grid_frame(cmp)` lays out one row per example: its id, input fields and expected output, then for each version
its output, whether it passed (the task's row score: exact match, JSON validity, or ROUGE-L at least
`TEXT_PASS`), each scorer column (custom scorers, judges) and its model error; and `outcome`, whether the versions
agree (all pass, all fail, mixed). `GridQuery` says what to show (text search, sort, filters, page) and
`query_grid` answers it with pandas, so the view only renders a page. No widgets here: the comparison widget's
Grid tab (`workspace.ui.widgets`) and tests use the same functions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from workspace.analysis.compare import VersionComparison, row_score_name
from workspace.errors import ComparisonError

__all__ = [
    'GridColumn',
    'GridFilter',
    'GridQuery',
    'GridPage',
    'FILTER_OPS',
    'TEXT_PASS',
    'grid_frame',
    'grid_columns',
    'query_grid',
]

#: A free-text output passes when its ROUGE-L against the reference reaches this.
TEXT_PASS = 0.5

ColumnKind = Literal['id', 'input', 'expected', 'output', 'pass', 'score', 'error', 'outcome']
Op = Literal['contains', 'does not contain', '=', '≠', '>', '≥', '<', '≤', 'is empty', 'is not empty']
FILTER_OPS: tuple[Op, ...] = ('contains', 'does not contain', '=', '≠', '>', '≥', '<', '≤', 'is empty', 'is not empty')


@dataclass(frozen=True)
class GridColumn:
    """One column of the grid: its key in the frame, its title, what it holds, and the version it belongs to."""

    key: str
    title: str
    kind: ColumnKind
    version: str | None = None

    @property
    def numeric(self) -> bool:
        return self.kind in ('score', 'pass')


@dataclass(frozen=True)
class GridFilter:
    """Keep the rows whose `column` satisfies `op value` (`value` is ignored by 'is empty' and 'is not empty';
    on a pass column, 'pass' and 'fail' read as true and false)."""

    column: str
    op: Op
    value: str = ''


@dataclass(frozen=True)
class GridQuery:
    """What the grid shows: a search over every text column, a sort, filters (all must hold) and a page."""

    search: str = ''
    sort: str | None = None
    ascending: bool = True
    filters: tuple[GridFilter, ...] = ()
    page: int = 0
    per_page: int = 50

    def replace(self, **changes: Any) -> GridQuery:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class GridPage:
    """One page of the grid: its rows, the columns, how many rows match and how many there are in all."""

    rows: pd.DataFrame
    columns: list[GridColumn]
    matches: int
    total: int
    page: int
    pages: int
    query: GridQuery = field(default_factory=GridQuery)


def _passed(frame: pd.DataFrame, task: str) -> pd.Series:
    score = frame[row_score_name(task)].astype(float).fillna(0.0)
    return score >= (TEXT_PASS if task == 'text' else 1.0)  # a blocked row already scores 0


def grid_columns(cmp: VersionComparison, names: dict[str, str] | None = None) -> list[GridColumn]:
    """Return the grid's columns in order: example, inputs, expected, then per version output, pass, each scorer
    column and error, then the outcome across versions."""
    names = names or {v: v for v in cmp.version_ids}
    columns = [GridColumn('example_id', 'example', 'id')]
    columns += [GridColumn(name, name, 'input') for name in cmp.dataset.inputs]
    columns.append(GridColumn('expected', 'expected', 'expected'))
    scorers = _scorer_columns(cmp)
    for version in cmp.version_ids:
        short = names[version]
        columns += [
            GridColumn(f'{version}|output', f'{short} output', 'output', version),
            GridColumn(f'{version}|pass', f'{short} pass', 'pass', version),
        ]
        columns += [GridColumn(f'{version}|{s}', f'{short} {s}', 'score', version) for s in scorers]
        columns.append(GridColumn(f'{version}|error', f'{short} error', 'error', version))
    columns.append(GridColumn('outcome', 'outcome', 'outcome'))
    return columns


def _scorer_columns(cmp: VersionComparison) -> list[str]:
    main = row_score_name(cmp.task)
    frame = cmp.frames[cmp.baseline]
    found = [main] + [c for c in getattr(cmp, 'scorers', []) if c != main and c in frame.columns]
    return list(dict.fromkeys(found))


def _text(value: Any) -> Any:
    if isinstance(value, list):
        return ' | '.join(str(v) for v in value)
    return value


def grid_frame(cmp: VersionComparison) -> pd.DataFrame:
    """Return one row per compared example with every version's output, pass, scores and error side by side
    (columns keyed as in `grid_columns`), and `outcome`: 'all pass', 'all fail' or 'mixed'.

    >>> grid_frame(cmp).query("outcome == 'mixed'")
    """
    base = cmp.frames[cmp.baseline]
    ids = list(cmp.common_ids)
    inputs = list(cmp.dataset.inputs)
    parts: dict[str, Any] = {'example_id': ids}
    first = base.loc[ids]
    for name in inputs:
        parts[name] = first[name].map(_text).to_numpy() if name in first.columns else [''] * len(ids)
    parts['expected'] = first['expected'].map(_text).to_numpy()
    scorers = _scorer_columns(cmp)
    passes = []
    for version in cmp.version_ids:
        frame = cmp.frames[version].loc[ids]
        passed = _passed(frame, cmp.task).to_numpy()
        passes.append(passed)
        parts[f'{version}|output'] = frame['prediction'].map(_text).to_numpy()
        parts[f'{version}|pass'] = passed
        for scorer in scorers:
            values = frame[scorer] if scorer in frame.columns else pd.Series(np.nan, index=frame.index)
            parts[f'{version}|{scorer}'] = pd.to_numeric(values, errors='coerce').to_numpy()
        parts[f'{version}|error'] = frame['error'].to_numpy()
    stacked = np.vstack(passes)
    parts['outcome'] = np.where(stacked.all(axis=0), 'all pass', np.where(~stacked.any(axis=0), 'all fail', 'mixed'))
    return pd.DataFrame(parts)


def _as_text(series: pd.Series) -> pd.Series:
    return series.astype(object).where(series.notna(), '').astype(str)


def _compare(series: pd.Series, op: Op, value: str, column: GridColumn) -> pd.Series:
    if op == 'is empty':
        return series.isna() | (_as_text(series) == '')
    if op == 'is not empty':
        return series.notna() & (_as_text(series) != '')
    if column.kind == 'pass':
        wanted = value.strip().lower() in ('pass', 'passed', 'true', '1', 'yes', '✓')
        if op in ('=', 'contains'):
            return series == wanted
        if op in ('≠', 'does not contain'):
            return series != wanted
    if op in ('>', '≥', '<', '≤') or (column.numeric and op in ('=', '≠')):
        try:
            number = float(value.strip().rstrip('%')) / (100 if value.strip().endswith('%') else 1)
        except ValueError:
            raise ComparisonError(f'{column.title} {op} {value!r}: give a number, e.g. 0.5 or 50%') from None
        numbers = pd.to_numeric(series, errors='coerce')
        return {
            '>': numbers > number,
            '≥': numbers >= number,
            '<': numbers < number,
            '≤': numbers <= number,
            '=': np.isclose(numbers.fillna(np.inf), number),
            '≠': ~np.isclose(numbers.fillna(np.inf), number),
        }[op]
    text = _as_text(series).str.lower()
    needle = value.strip().lower()
    if op == 'contains':
        return text.str.contains(needle, regex=False)
    if op == 'does not contain':
        return ~text.str.contains(needle, regex=False)
    if op == '=':
        return text == needle
    if op == '≠':
        return text != needle
    raise ComparisonError(f'filter op {op!r} is not one of {", ".join(FILTER_OPS)}')


def _search(frame: pd.DataFrame, columns: Sequence[GridColumn], text: str) -> pd.Series:
    """Return the rows where every word of `text` occurs in some text column (case-insensitive)."""
    words = text.lower().split()
    searched = [c.key for c in columns if c.kind in ('id', 'input', 'expected', 'output', 'error')]
    haystack = _as_text(frame[searched[0]])
    for key in searched[1:]:
        haystack = haystack + '\u241f' + _as_text(frame[key])  # a separator no word spans
    haystack = haystack.str.lower()
    keep = pd.Series(True, index=frame.index)
    for word in words:
        keep &= haystack.str.contains(word, regex=False)
    return keep


def query_grid(frame: pd.DataFrame, columns: Sequence[GridColumn], query: GridQuery) -> GridPage:
    """Return the page of the grid the query asks for: rows matching the search and every filter, sorted (a
    stable sort; empty values last), cut to the page (a page past the end shows the last one).

    >>> page = query_grid(grid_frame(cmp), grid_columns(cmp), GridQuery(search='refund', sort='outcome'))
    """
    by_key = {c.key: c for c in columns}
    keep = pd.Series(True, index=frame.index)
    if query.search.strip():
        keep &= _search(frame, columns, query.search)
    for f in query.filters:
        if f.column not in by_key:
            raise ComparisonError(f'the grid has no column {f.column!r}; its columns: {", ".join(by_key)}')
        keep &= _compare(frame[f.column], f.op, f.value, by_key[f.column]).to_numpy()
    shown = frame[keep.to_numpy()]
    if query.sort is not None:
        if query.sort not in by_key:
            raise ComparisonError(f'the grid has no column {query.sort!r} to sort by; its columns: {", ".join(by_key)}')
        column = by_key[query.sort]
        key = None if column.numeric else (lambda s: _as_text(s).str.lower())
        shown = shown.sort_values(query.sort, ascending=query.ascending, kind='stable', na_position='last', key=key)
    pages = max(1, math.ceil(len(shown) / query.per_page))
    page = min(max(query.page, 0), pages - 1)
    rows = shown.iloc[page * query.per_page : (page + 1) * query.per_page]
    return GridPage(rows, list(columns), len(shown), len(frame), page, pages, query.replace(page=page))
