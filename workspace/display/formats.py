"""How values read: one formatter for percentages, milliseconds, tokens, money, p-values, counts, times and nested
values.

Every table, verdict, widget, report and DataFrame the workspace shows formats through here, so the same value
reads the same way wherever it is shown: a proportion is `62.5%` in the summary, the cost tab and a DataFrame
alike, a latency `1,733 ms`, a mean token count `347`, a price `$0.0000171`, a p-value `<0.001`. Pure functions of
plain values; any layer may import this module.

`format_value(value, kind)` formats by kind; `kind_of(column)` says which kind a column of the workspace's
DataFrames holds, from the naming conventions the workspace keeps (`*_s` seconds, `*_usd` dollars, `*_tokens`,
`p_value`, `share`, `*_at` timestamps, proportions such as `accuracy` or `macro_f1`).
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

__all__ = [
    'Kind',
    'format_p',
    'p_phrase',
    'points',
    'percent',
    'milliseconds',
    'tokens',
    'money',
    'count',
    'score',
    'timestamp',
    'readable',
    'format_value',
    'kind_of',
]

Kind = Literal['percent', 'ms', 'tokens', 'money', 'p', 'count', 'score', 'timestamp', 'nested', 'text']

#: Scores in [0, 1] the workspace reports as proportions: shown as percentages.
PROPORTIONS = frozenset(
    {
        'accuracy',
        'macro_f1',
        'balanced_accuracy',
        'exact_match',
        'normalized_match',
        'json_valid',
        'share',
        'traffic_share',
        'pass_rate',
        'agreement',
        'precision',
        'recall',
        'f1',
        'dev_score',
        'test_score',
        'confidence',
        'coverage',
    }
)


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN, NaT
    except (TypeError, ValueError):
        return False


def format_p(p: float) -> str:
    """Return a p-value as people read it: '<0.001', three decimals below 0.01, else two ('0.62', '1.00').

    >>> format_p(4.17e-07), format_p(0.0042), format_p(0.6234), format_p(1.0)
    ('<0.001', '0.004', '0.62', '1.00')
    """
    if _missing(p):  # no test was run
        return ''
    if p < 0.001:
        return '<0.001'
    return f'{p:.3f}' if p < 0.01 else f'{p:.2f}'


def p_phrase(p: float) -> str:
    """Return 'p < 0.001' or 'p = 0.62', for sentences.

    >>> p_phrase(0.0001), p_phrase(0.62)
    ('p < 0.001', 'p = 0.62')
    """
    shown = format_p(p)
    if not shown:
        return 'no p-value'
    return f'p < {shown[1:]}' if shown.startswith('<') else f'p = {shown}'


def points(value: float) -> str:
    """Return a difference of two proportions in percentage points, signed, one decimal: 0.0512 -> '+5.1'."""
    return f'{round(value * 100, 1) + 0.0:+.1f}'


def percent(value: float | None, digits: int = 1) -> str:
    """Return a proportion as a percentage, one decimal: 0.625 -> '62.5%'; '' when missing.

    >>> percent(0.625), percent(1.0), percent(0.212361), percent(None)
    ('62.5%', '100.0%', '21.2%', '')
    """
    if _missing(value):
        return ''
    return f'{round(float(value) * 100, digits) + 0.0:.{digits}f}%'  # type: ignore[arg-type]


def milliseconds(seconds: float | None) -> str:
    """Return a duration given in seconds as whole milliseconds: 1.7334 -> '1,733 ms'; '' when missing.

    >>> milliseconds(1.7334), milliseconds(0.0004), milliseconds(None)
    ('1,733 ms', '0 ms', '')
    """
    if _missing(seconds):
        return ''
    return f'{float(seconds) * 1000:,.0f} ms'  # type: ignore[arg-type]


def tokens(value: float | None) -> str:
    """Return a token count (or a mean of counts) as a whole number: 346.7 -> '347'; '' when missing.

    >>> tokens(346.7), tokens(12034), tokens(None)
    ('347', '12,034', '')
    """
    if _missing(value):
        return ''
    return f'{float(value):,.0f}'  # type: ignore[arg-type]


def money(value: float | None) -> str:
    """Return dollars: 'n/a' when unknown, '$0' for free, else enough digits to see a per-row cost.

    >>> money(None), money(0.0), money(0.0000171), money(0.25), money(12.5)
    ('n/a', '$0', '$0.0000171', '$0.25', '$12.50')
    """
    if _missing(value):
        return 'n/a'
    amount = float(value)  # type: ignore[arg-type]
    if amount == 0:
        return '$0'
    if amount >= 1:
        return f'${amount:,.2f}'
    digits = max(2, 2 - math.floor(math.log10(amount)))  # three significant digits
    return '$' + f'{amount:.{digits}f}'.rstrip('0').rstrip('.')


def count(value: float | None) -> str:
    """Return a count with thousands separators: 1733 -> '1,733'; '' when missing."""
    if _missing(value):
        return ''
    return f'{int(round(float(value))):,}'  # type: ignore[arg-type]


def score(value: float | None) -> str:
    """Return a score that is not a proportion (a ROUGE F-measure, a mean rating) with three decimals."""
    if _missing(value):
        return ''
    return f'{float(value):.3f}'  # type: ignore[arg-type]


def timestamp(value: Any) -> str:
    """Return a time to the second, without microseconds or a 'T': '2026-12-06 15:23:51'; '' when missing.

    >>> timestamp(datetime.datetime(2026, 12, 6, 15, 23, 51, 123456))
    '2026-12-06 15:23:51'
    """
    if _missing(value):
        return ''
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            return value
    if hasattr(value, 'to_pydatetime'):
        value = value.to_pydatetime()
    if isinstance(value, datetime.datetime):
        return value.strftime('%Y-%m-%d %H:%M:%S')
    if isinstance(value, datetime.date):
        return value.isoformat()
    return str(value)


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:.3g}'
    if isinstance(value, (datetime.datetime, datetime.date)):
        return timestamp(value)
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def readable(value: Any, *, limit: int = 300) -> str:
    """Return a nested value (a dict, a list, a list of dicts) as one readable line: `key: value` pairs joined by
    ', ', list items by '; ', cut at `limit` characters with an ellipsis. Empty lists and dicts read as ''.

    >>> readable({'rule': 'pii', 'span': [3, 9], 'text': 'a@b.co'})
    'rule: pii, span: [3, 9], text: a@b.co'
    >>> readable([{'slot': 'email', 'type': 'email'}, {'slot': 'n', 'type': 'integer'}])
    'slot: email, type: email; slot: n, type: integer'
    """
    if _missing(value) if not isinstance(value, (Mapping, list, tuple)) else False:
        return ''
    if isinstance(value, Mapping):
        text = ', '.join(f'{k}: {_scalar(v)}' for k, v in value.items() if not _missing_nested(v))
    elif isinstance(value, (list, tuple)):
        text = '; '.join(readable(v, limit=limit) if isinstance(v, Mapping) else _scalar(v) for v in value)
    else:
        text = _scalar(value)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + '…'


def _missing_nested(value: Any) -> bool:
    return not isinstance(value, (Mapping, list, tuple)) and _missing(value)


_FORMATTERS: dict[str, Callable[[Any], str]] = {
    'percent': percent,
    'ms': milliseconds,
    'tokens': tokens,
    'money': money,
    'p': format_p,
    'count': count,
    'score': score,
    'timestamp': timestamp,
}


def format_value(value: Any, kind: Kind) -> str:
    """Format one value by its kind (see `Kind`); this is what every table cell of the workspace goes through.

    >>> format_value(0.625, 'percent'), format_value(1.7334, 'ms'), format_value(4e-14, 'p')
    ('62.5%', '1,733 ms', '<0.001')
    """
    if kind == 'nested' or isinstance(value, (Mapping, list, tuple)):
        return readable(value)
    formatter: Callable[[Any], str] | None = _FORMATTERS.get(kind)
    if formatter is not None:
        try:
            return formatter(value)
        except (TypeError, ValueError):
            return str(value)
    return '' if _missing(value) else str(value)


def kind_of(column: str) -> Kind | None:
    """Return the kind of value a workspace DataFrame column holds, from its name, or None when the name says
    nothing (the value's own type decides then).

    >>> kind_of('mean_latency_s'), kind_of('cost_usd'), kind_of('mean_tokens'), kind_of('p_value'), kind_of('share')
    ('ms', 'money', 'tokens', 'p', 'percent')
    """
    name = str(column).lower()
    if name in ('p', 'p_value', 'pvalue') or name.endswith('_p_value'):
        return 'p'
    if name.endswith('_usd') or name in ('cost', 'usd'):
        return 'money'
    if name == 'latency_s' or name.endswith('latency_s') or name in ('wall_s', 'mean_latency_s', 'seconds_per_call'):
        return 'ms' if 'latency' in name else None
    if name.endswith('tokens') or name.endswith('_tokens_mean'):
        return 'tokens'
    if name.endswith('_at') or name in ('at', 'first_seen', 'last_seen', 'window', 'started', 'finished'):
        return 'timestamp'
    if name in PROPORTIONS or name.endswith('_share') or name.endswith('_rate') or name.startswith('share'):
        return 'percent'
    return None
