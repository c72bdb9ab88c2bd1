"""How numbers read: one formatter for p-values, percentages, point differences, milliseconds, tokens and money.

Every table, verdict, widget and report of the workspace formats through here, so the same value reads the same
way wherever it is shown. Pure functions of plain values; any layer may import this module.
"""

from __future__ import annotations

__all__ = ['format_p', 'p_phrase', 'points']


def format_p(p: float) -> str:
    """Return a p-value as people read it: '<0.001', three decimals below 0.01, else two ('0.62', '1.00').

    >>> format_p(4.17e-07), format_p(0.0042), format_p(0.6234), format_p(1.0)
    ('<0.001', '0.004', '0.62', '1.00')
    """
    if p != p:  # NaN: no test was run
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
