"""DataFrames that read well in a notebook: the values stay as they are (numbers to compute with, dicts and lists
to index), and the display goes through the one formatter, `workspace.display.formats`.

`shown(frame)` returns a `Shown` DataFrame: a notebook renders it with each column formatted by its kind (from
its name, or as given): proportions as percentages, latencies in milliseconds, token counts whole, money in
dollars, p-values as `<0.001`, times to the second, and nested values (violations, audit rows, slots, history)
as one readable line. `print()` shows the same text.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from workspace.display.formats import Kind, format_value, kind_of

__all__ = ['Shown', 'shown', 'column_kinds']

_TABLE_STYLES = [
    {'selector': 'th', 'props': 'text-align: left; vertical-align: bottom; white-space: nowrap; padding: 3px 8px;'},
    {'selector': 'td', 'props': 'padding: 3px 8px; border-bottom: 1px solid #e5e7eb; vertical-align: top;'},
]


def _nested(series: pd.Series) -> bool:
    """Return whether a column holds dicts or lists (an audit row's before and after mix them with plain text)."""
    return any(isinstance(v, (dict, list, tuple)) for v in series.head(500))


def _timestamps(series: pd.Series) -> bool:
    return pd.api.types.is_datetime64_any_dtype(series.dtype)


def column_kinds(frame: pd.DataFrame, given: Mapping[str, Kind] | None = None) -> dict[str, Kind]:
    """Return the kind of each column that needs formatting: as given, else from its name, else from its values
    (timestamps, nested values, floats as 3 significant digits are left to 'score')."""
    kinds: dict[str, Kind] = {}
    for column in frame.columns:
        if given and column in given:
            kinds[column] = given[column]
            continue
        series = frame[column]
        if _timestamps(series):
            kinds[column] = 'timestamp'
        elif series.dtype == object and _nested(series):
            kinds[column] = 'nested'
        elif (found := kind_of(str(column))) is not None:
            kinds[column] = found
        elif pd.api.types.is_float_dtype(series.dtype):
            kinds[column] = 'score'
    return kinds


class Shown(pd.DataFrame):
    """A DataFrame shown through the workspace's formatter (see the module docstring); otherwise a DataFrame."""

    _metadata = ['kinds']
    kinds: dict[str, Kind] | None

    @property
    def _constructor(self) -> Callable[..., Shown]:
        return Shown

    def _formatters(self) -> dict[str, Callable[[Any], str]]:
        kinds = column_kinds(self, getattr(self, 'kinds', None))
        return {c: functools.partial(_format, kind=k) for c, k in kinds.items()}

    def formatted(self) -> pd.DataFrame:
        """Return a plain DataFrame of the strings a person sees."""
        return _formatted(self, pd.DataFrame(self))

    def _repr_html_(self) -> str:  # type: ignore[override]
        if self.empty:
            columns = ', '.join(map(str, self.columns))
            return f'<p>No rows{": columns " + html.escape(columns) if columns else ""}.</p>'
        limit = 200
        frame = pd.DataFrame(self).head(limit)
        text = _formatted(self, frame)
        # long text wraps in a readable column; numbers, times and short values stay on one line
        long = [c for c in frame.columns if text[c].astype(str).str.len().max() > 40]
        styler = frame.style.format(self._formatters(), na_rep='')  # type: ignore[arg-type]
        styler = styler.set_properties(**{'text-align': 'left', 'white-space': 'nowrap'})
        if long:
            styler = styler.set_properties(
                subset=long, **{'white-space': 'pre-wrap', 'min-width': '16em', 'max-width': '40em'}
            )
        if isinstance(frame.index, pd.RangeIndex):  # a listing: its row numbers say nothing
            styler = styler.hide(axis='index')
        table = styler.set_table_styles(_TABLE_STYLES).to_html()
        more = len(self) - limit
        tail = f'<p style="color:#59636e">{more:,} more rows not shown ({len(self):,} in all).</p>' if more > 0 else ''
        return table + tail

    def __repr__(self) -> str:
        return pd.DataFrame(self.formatted()).__repr__()


def _format(value: Any, *, kind: Kind) -> str:
    return format_value(value, kind)


def _formatted(shown_frame: Shown, frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for column, fmt in shown_frame._formatters().items():
        out[column] = [fmt(v) for v in frame[column]]
    return out


def shown(frame: pd.DataFrame, kinds: Mapping[str, Kind] | None = None) -> Shown:
    """Return `frame` as a `Shown` DataFrame: the same values, displayed through the one formatter; `kinds`
    overrides the kind of some columns (e.g. `{'dev_score': 'percent'}`).

    >>> shown(pd.DataFrame({'share': [0.212361], 'mean_latency_s': [1.7334]}))
       share mean_latency_s
    0  21.2%       1,733 ms
    """
    out = Shown(frame)
    out.kinds = dict(kinds or {})
    return out
